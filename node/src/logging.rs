//! The node's log on standard error: `BULWARK_LOG` filters it (default `info`, and
//! openraft's own lines from `warn`), `BULWARK_LOG_FORMAT=json` makes it JSON. A peer
//! that is down makes openraft warn on every retry, about ten lines a second; each of
//! those warnings is let through once per [`REPEAT_EVERY`] for the same place in the
//! code and the same message (the message names the peer), so one line per peer and
//! kind says the peer is still down.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How often the same openraft warning may appear.
const REPEAT_EVERY: Duration = Duration::from_secs(10);
/// Most distinct warnings remembered; older ones are forgotten past it.
const REMEMBERED: usize = 1024;

pub fn init() {
    let filter = EnvFilter::try_from_env("BULWARK_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let layer = if std::env::var("BULWARK_LOG_FORMAT").as_deref() == Ok("json") {
        layer.json().boxed()
    } else {
        layer.boxed()
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(Repeats::default()))
        .init();
}

/// Lets an openraft warning or error through once per [`REPEAT_EVERY`] for each
/// callsite and message; everything else through always.
#[derive(Default)]
struct Repeats {
    last: Mutex<HashMap<(tracing::callsite::Identifier, String), Instant>>,
}

impl<S> Filter<S> for Repeats {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if !meta.target().starts_with("openraft") || *meta.level() > Level::WARN {
            return true;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let key = (meta.callsite(), message.0);
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        if last
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REPEAT_EVERY)
        {
            return false;
        }
        if last.len() >= REMEMBERED {
            last.retain(|_, at| now.duration_since(*at) < REPEAT_EVERY);
        }
        last.insert(key, now);
        true
    }
}

/// The `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Lines(Arc<StdMutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[test]
    fn a_repeated_openraft_warning_shows_once_per_peer_and_ours_always() {
        let lines = Lines::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(lines.clone())
            .with_ansi(false)
            .with_filter(Repeats::default());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..30 {
                for target in [2, 3] {
                    tracing::warn!(target: "openraft::replication", "error replication to target={target}");
                }
                tracing::warn!("ours, every time");
            }
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("error replication to target=2").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("error replication to target=3").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("ours, every time").count(), 30, "{text}");
    }
}
