//! The frame every console page shares, and how pages write times and sizes.

use maud::{html, Markup, DOCTYPE};

use super::Viewer;
use crate::auth::Access;

/// The sections of the console, in the order the navigation shows them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Flow,
    Quarantine,
    Messages,
    Queue,
    Events,
    Cluster,
    Policy,
    Users,
}

impl Section {
    const ALL: [Section; 8] = [
        Section::Flow,
        Section::Quarantine,
        Section::Messages,
        Section::Queue,
        Section::Events,
        Section::Cluster,
        Section::Policy,
        Section::Users,
    ];

    fn title(self) -> &'static str {
        match self {
            Section::Flow => "Mail flow",
            Section::Quarantine => "Quarantine",
            Section::Messages => "Message trace",
            Section::Queue => "Queue",
            Section::Events => "Events",
            Section::Cluster => "Cluster",
            Section::Policy => "Policy",
            Section::Users => "Users",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Section::Flow => "/ui/flow",
            Section::Quarantine => "/ui/quarantine",
            Section::Messages => "/ui/messages",
            Section::Queue => "/ui/queue",
            Section::Events => "/ui/events",
            Section::Cluster => "/ui/cluster",
            Section::Policy => "/ui/policy",
            Section::Users => "/ui/users",
        }
    }

    /// What a role needs to see the section in the navigation.
    fn access(self) -> Access {
        match self {
            Section::Flow | Section::Quarantine | Section::Messages | Section::Queue => {
                Access::Messages
            }
            Section::Events => Access::Events,
            Section::Cluster => Access::Status,
            Section::Policy => Access::Policy,
            Section::Users => Access::Tokens,
        }
    }
}

/// A page for a signed-in person: the navigation, who they are, a sign-out button,
/// then `body`.
pub(crate) fn page(viewer: &Viewer, title: &str, section: Section, body: Markup) -> Markup {
    let caller = viewer.caller();
    document(
        title,
        html! {
            header.top {
                a.brand href="/ui/" { "Bulwark" }
                nav aria-label="Sections" {
                    @for s in Section::ALL.into_iter().filter(|s| s.access().allows(caller.role)) {
                        a href=(s.path()) aria-current=[(s == section).then_some("page")] {
                            (s.title())
                        }
                    }
                }
                form.who method="post" action="/ui/signout" {
                    span { (caller.name) " · " (caller.role.as_str()) }
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    button.link type="submit" { "Sign out" }
                }
            }
            main { (body) }
        },
    )
}

/// A page without navigation: the sign-in form, or an error before one signed in.
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    document(title, html! { main.narrow { (body) } })
}

/// A page of the recipients' own: its own header in `body`, no console navigation.
pub(crate) fn plain(title: &str, body: Markup) -> Markup {
    document(title, body)
}

fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " · Bulwark" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body { (body) }
        }
    }
}

/// Unix milliseconds as a person reads them: `2026-12-06 12:01:02` (UTC).
pub(crate) fn time(ms: i64) -> String {
    let rfc = bulwark_storage::event::rfc3339(ms);
    let mut shown = rfc.replacen('T', " ", 1);
    if let Some(dot) = shown.find(['.', 'Z']) {
        shown.truncate(dot);
    }
    shown
}

/// A size in bytes as a person reads it: `812 B`, `2.0 KiB`, `1.5 MiB`, `3.0 GiB`.
pub(crate) fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    // Sizes are far below 2^52 bytes: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else {
        format!("{:.1} GiB", b / KIB / KIB / KIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_as_a_person_reads_them() {
        assert_eq!(time(1_764_300_000_123), "2025-11-28 03:20:00");
        assert_eq!(size(812), "812 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(size(1_572_864), "1.5 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }
}
