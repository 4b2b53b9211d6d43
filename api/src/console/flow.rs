//! Mail flow: what the gateway received, delivered, tagged, quarantined, refused and
//! failed in each hour of the last day and each day of the last two weeks, drawn as
//! bar charts made on the server (SVG, each bar titled with its hour and count), and
//! a day's top sender and recipient domains and the reasons mail was held or refused.
//! The counts are kept by the state as it applies events (`bulwark_storage::Flow`),
//! so the page reads a few hundred keys however much mail passed.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bulwark_storage::{Dimension, Flow, HourCounts};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{page, Section};
use super::{PageError, Viewer};
use crate::auth::Access;
use crate::routes::ApiState;
use crate::ApiError;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Days the daily chart shows, today included.
const DAYS: i64 = 14;
/// Entries in each top list.
const TOP: usize = 10;
/// The charts' drawing size (the SVG scales to the page's width).
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 64.0;

/// The day whose top lists the page shows.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct Day {
    /// `YYYY-MM-DD` (UTC); today when empty.
    day: String,
}

/// What one page shows, read in one go.
struct Read {
    hours: Vec<HourCounts>,
    days: Vec<HourCounts>,
    tops: Vec<(&'static str, Vec<(String, u64)>)>,
}

/// `GET /ui/flow`: the charts and a day's top lists.
pub(crate) async fn show(
    State(s): State<ApiState>,
    viewer: Viewer,
    day: Result<Query<Day>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    if !Access::Messages.allows(viewer.caller().role) {
        return Err(super::forbidden(&viewer, "read the mail flow").into());
    }
    let Query(day) = day.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now = crate::queue::now_ms();
    let today = now.div_euclid(DAY_MS) * DAY_MS;
    let shown_day = super::day_ms("day", &day.day, 0)?.unwrap_or(today);
    let node = s.node.clone();
    let read = tokio::task::spawn_blocking(move || {
        let state = node.state();
        let hours = state.flow_hours(now - 23 * HOUR_MS, now)?;
        let days = daily(&state.flow_hours(today - (DAYS - 1) * DAY_MS, today + DAY_MS - 1)?);
        let mut tops = Vec::new();
        for (title, dimension) in [
            ("Sender domains", Dimension::SenderDomain),
            ("Recipient domains", Dimension::RecipientDomain),
            ("Tagged or held for", Dimension::JudgedFor),
            ("Refused for", Dimension::RefusedFor),
        ] {
            tops.push((title, state.flow_top(shown_day, dimension, TOP)?));
        }
        Ok::<_, bulwark_storage::Error>(Read { hours, days, tops })
    })
    .await
    .map_err(ApiError::internal)??;
    let day_text = super::layout::time(shown_day)[..10].to_string();
    let body = html! {
        h1 { "Mail flow" }
        div.charts {
            section.card {
                h2 { "Last 24 hours" span.muted { " · by hour, UTC" } }
                (charts(&read.hours, HOUR_MS))
            }
            section.card {
                h2 { "Last " (DAYS) " days" span.muted { " · by day, UTC" } }
                (charts(&read.days, DAY_MS))
            }
        }
        h2 { "Top of " (day_text) }
        form.inline.day method="get" action="/ui/flow" {
            label.muted for="day" { "Day" }
            input #day type="date" name="day" value=(day_text);
            button type="submit" { "Show" }
        }
        div.tops {
            @for (title, entries) in &read.tops {
                section.card {
                    h3 { (title) }
                    @if entries.is_empty() {
                        p.muted { "None." }
                    } @else {
                        table.top {
                            tbody {
                                @for (name, count) in entries {
                                    tr { td.addr { (name) } td.num { (count) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "Mail flow", Section::Flow, body).into_response())
}

/// Hourly counts summed into days (each day's 24 hours in order).
fn daily(hours: &[HourCounts]) -> Vec<HourCounts> {
    hours
        .chunks(24)
        .map(|day| {
            let mut sum = HourCounts {
                start_ms: day[0].start_ms,
                counts: [0; 6],
            };
            for h in day {
                for (total, n) in sum.counts.iter_mut().zip(h.counts) {
                    *total += n;
                }
            }
            sum
        })
        .collect()
}

/// One small bar chart per kind of flow, with its total.
fn charts(buckets: &[HourCounts], step_ms: i64) -> Markup {
    html! {
        dl.flow {
            @for flow in Flow::ALL {
                @let counts: Vec<u64> = buckets.iter().map(|b| b.get(flow)).collect();
                dt {
                    span.swatch.(flow.as_str()) {}
                    (label(flow))
                    span.total { (counts.iter().sum::<u64>()) }
                }
                dd { (bars(flow, buckets, &counts, step_ms)) }
            }
        }
    }
}

fn label(flow: Flow) -> &'static str {
    match flow {
        Flow::Received => "Received",
        Flow::Delivered => "Delivered",
        Flow::Tagged => "Tagged",
        Flow::Quarantined => "Quarantined",
        Flow::Rejected => "Refused",
        Flow::Failed => "Failed",
    }
}

/// The bars of one kind of flow: one per bucket, scaled to the largest, each titled
/// with its time and count (a browser shows the title on hover or touch).
fn bars(flow: Flow, buckets: &[HourCounts], counts: &[u64], step_ms: i64) -> Markup {
    // Counts and buckets are far below 2^52: the conversions are exact.
    #[allow(clippy::cast_precision_loss)]
    let scale = |n: usize| n as f64;
    let most = counts.iter().copied().max().unwrap_or(0).max(1);
    let slot = WIDTH / scale(buckets.len().max(1));
    let drawn: Vec<(String, String, String, String)> = buckets
        .iter()
        .zip(counts)
        .enumerate()
        .map(|(i, (b, &count))| {
            let share = scale(usize::try_from(count).unwrap_or(usize::MAX))
                / scale(usize::try_from(most).unwrap_or(usize::MAX));
            let h = if count == 0 {
                0.0
            } else {
                (share * (HEIGHT - 2.0)).max(1.5)
            };
            let x = scale(i) * slot + slot * 0.1;
            let from = super::layout::time(b.start_ms);
            let title = if step_ms == DAY_MS {
                format!("{}: {count}", &from[..10])
            } else {
                let to = super::layout::time(b.start_ms + step_ms);
                format!("{}–{}: {count}", &from[..16], &to[11..16])
            };
            (
                format!("{x:.1}"),
                format!("{:.1}", HEIGHT - h),
                format!("{h:.1}"),
                title,
            )
        })
        .collect();
    let width = format!("{:.1}", slot * 0.8);
    let by = if step_ms == DAY_MS { "day" } else { "hour" };
    html! {
        svg.chart.(flow.as_str()) viewBox={"0 0 " (WIDTH) " " (HEIGHT)} preserveAspectRatio="none"
            role="img" aria-label={(label(flow)) " by " (by)} {
            line.axis x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
            @for (x, y, h, title) in &drawn {
                rect x=(x) y=(y) width=(width) height=(h) { title { (title) } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_sum_their_hours() {
        let hours: Vec<HourCounts> = (0..48)
            .map(|h| HourCounts {
                start_ms: h * HOUR_MS,
                counts: [1, 2, 0, 0, 0, u64::try_from(h).unwrap()],
            })
            .collect();
        let days = daily(&hours);
        assert_eq!(days.len(), 2);
        assert_eq!(days[1].start_ms, DAY_MS);
        assert_eq!(days[0].counts, [24, 48, 0, 0, 0, (0..24).sum()]);
        assert_eq!(days[1].counts[5], (24..48).sum::<u64>());
    }

    #[test]
    fn bars_scale_to_the_largest_and_say_their_count() {
        let buckets: Vec<HourCounts> = [0u64, 5, 10]
            .iter()
            .enumerate()
            .map(|(i, &n)| HourCounts {
                start_ms: 1_764_298_800_000 + i as i64 * HOUR_MS,
                counts: [n, 0, 0, 0, 0, 0],
            })
            .collect();
        let counts: Vec<u64> = buckets.iter().map(|b| b.get(Flow::Received)).collect();
        let svg = bars(Flow::Received, &buckets, &counts, HOUR_MS).into_string();
        assert!(svg.contains("height=\"0.0\""), "{svg}");
        assert!(svg.contains("height=\"31.0\""), "{svg}");
        assert!(svg.contains("height=\"62.0\""), "{svg}");
        assert!(
            svg.contains("<title>2025-11-28 04:00–05:00: 5</title>"),
            "{svg}"
        );
    }
}
