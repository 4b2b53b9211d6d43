//! The mail log (`[log] mail_log`): one line per message per stage (received,
//! rejected, quarantined, released, deleted, expired, held, unheld, requeued,
//! delivered, deferred, bounced), as the maillog a Postfix administrator greps.
//!
//! It is a reader of the event log, not a hook in the mail's path: every stage is
//! already an event, committed before anything is answered, so this task follows the
//! events this node applies and writes a line for each stage this node decided (the
//! event's `node`: the node that accepted, rejected, delivered, or whose API took the
//! release). Each line is then written by exactly one node of a cluster, and the
//! three logs together hold each line once. The SMTP sessions and the delivery
//! workers never wait for it: should the file or the terminal be slow, the log falls
//! behind and catches up, the event log being its buffer; a line that cannot be
//! written (a full disk) is dropped and counted (`bulwark_mail_log_lines_dropped`).
//!
//! It starts at the end of the log when the node starts: the lines of what was
//! decided in the moment before a crash may be missing; the events stay on record.
//!
//! Lines go to a file (appended whole with `O_APPEND`, so logrotate's copytruncate
//! works; reopened at SIGHUP, for logrotate's create), to standard output (for
//! containers; the node's own diagnostics stay on standard error) or to standard
//! error.

mod line;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bulwark_consensus::RaftNode;
use bulwark_model::Event;
use bulwark_storage::{EventFilter, StateStore};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use line::lines;

/// How often the log looks for new events.
const POLL: Duration = Duration::from_millis(200);
/// Events read from the log at once.
const PAGE: usize = 1000;

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Appended to this file.
    File(PathBuf),
    Stdout,
    Stderr,
}

/// How a line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `key=value` pairs, values with a space or anything unprintable quoted.
    Text,
    /// One JSON object a line.
    Json,
}

/// `[log]`: the mail log's target (`None`: `mail_log = "off"`) and format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub target: Option<Target>,
    pub format: Format,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

/// What the mail log counts on this node.
#[derive(Default)]
struct Metrics {
    lines: Family<StageLabel, Counter>,
    dropped: Counter,
}

/// Where the lines are being written.
enum Output {
    File(File),
    Stdout,
    Stderr,
}

/// The mail log of one node: where it writes, how far it has read the event log,
/// and the events of the operation being read (an operation's lines are made from
/// all its events together).
pub struct MailLog {
    settings: Settings,
    output: Option<Output>,
    node: u64,
    metrics: Metrics,
    after: u64,
    op: Vec<Event>,
    reopen: bool,
    failing: bool,
}

impl MailLog {
    /// Opens the target (a file is created if missing, its directory too): a mail
    /// log that cannot be written stops the node at start, not later.
    pub fn open(settings: Settings, node: u64) -> std::io::Result<MailLog> {
        let output = match &settings.target {
            None => None,
            Some(Target::File(path)) => Some(Output::File(open_file(path)?)),
            Some(Target::Stdout) => Some(Output::Stdout),
            Some(Target::Stderr) => Some(Output::Stderr),
        };
        match &settings.target {
            Some(Target::File(path)) => {
                tracing::info!(path = %path.display(), format = ?settings.format, "mail log")
            }
            Some(target) => tracing::info!(to = ?target, format = ?settings.format, "mail log"),
            None => tracing::info!("no mail log (log.mail_log = \"off\")"),
        }
        Ok(MailLog {
            settings,
            output,
            node,
            metrics: Metrics::default(),
            after: 0,
            op: Vec::new(),
            reopen: false,
            failing: false,
        })
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "bulwark_mail_log_lines",
            "Mail log lines this node wrote, by stage (each line is written by one node)",
            self.metrics.lines.clone(),
        );
        registry.register(
            "bulwark_mail_log_lines_dropped",
            "Mail log lines this node could not write (the file or stream refused them)",
            self.metrics.dropped.clone(),
        );
    }

    /// Reads every event after the last one read, and writes the lines of this
    /// node's operations among them.
    fn step(&mut self, state: &StateStore) {
        if std::mem::take(&mut self.reopen) {
            self.reopen_file();
        }
        let mut text = String::new();
        let mut stages = Vec::new();
        loop {
            let (events, next) = match state.events(&EventFilter::default(), self.after, PAGE) {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "mail log: reading the event log");
                    break;
                }
            };
            for stored in events {
                let event = stored.event;
                self.after = self.after.max(event.seq);
                if self.op.first().is_some_and(|op| op.op_id != event.op_id) {
                    self.render(&mut text, &mut stages);
                }
                if event.node == self.node {
                    self.op.push(event);
                }
            }
            match next {
                Some(next) => self.after = self.after.max(next),
                // An operation's events are stored in one write: at the end of the
                // log, the last one read is whole.
                None => {
                    self.render(&mut text, &mut stages);
                    break;
                }
            }
            if text.len() >= 1 << 20 {
                self.write(&std::mem::take(&mut text), &std::mem::take(&mut stages));
            }
        }
        self.write(&text, &stages);
    }

    /// Appends the lines of the operation read so far to `text`.
    fn render(&mut self, text: &mut String, stages: &mut Vec<&'static str>) {
        for line in lines(&std::mem::take(&mut self.op)) {
            match self.settings.format {
                Format::Text => text.push_str(&line.to_text()),
                Format::Json => text.push_str(&line.to_json()),
            }
            text.push('\n');
            stages.push(line.stage);
        }
    }

    /// Writes whole lines at once (one `write` with `O_APPEND`, so that nothing else
    /// writing the file splits one); counts them, or the dropped ones.
    fn write(&mut self, text: &str, stages: &[&'static str]) {
        if text.is_empty() {
            return;
        }
        let written = match &mut self.output {
            None => return,
            Some(Output::File(file)) => file.write_all(text.as_bytes()),
            Some(Output::Stdout) => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            Some(Output::Stderr) => std::io::stderr().lock().write_all(text.as_bytes()),
        };
        match written {
            Ok(()) => {
                for stage in stages {
                    self.metrics
                        .lines
                        .get_or_create(&StageLabel { stage })
                        .inc();
                }
                if std::mem::take(&mut self.failing) {
                    tracing::info!("mail log: writing again");
                }
            }
            Err(e) => {
                self.metrics.dropped.inc_by(stages.len() as u64);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(error = %e, "mail log: lines dropped until it can be written again");
                }
                self.reopen = true;
            }
        }
    }

    /// Opens the file again at its path (at SIGHUP, after logrotate moved it away,
    /// or after a failed write); keeps the one open if that fails.
    fn reopen_file(&mut self) {
        let Some(Target::File(path)) = &self.settings.target else {
            return;
        };
        match open_file(path) {
            Ok(file) => self.output = Some(Output::File(file)),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "mail log: reopening"),
        }
    }
}

/// The file in append mode, created (readable by the owner and its group) if
/// missing, with its directory.
fn open_file(path: &std::path::Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// Writes the lines of this node's decisions from the moment it is called (the end of
/// the log then) until `stop` is cancelled, and those of what was decided until then;
/// reopens the file at SIGHUP. Call it before SMTP and the workers start.
pub fn run(
    mut log: MailLog,
    node: Arc<RaftNode>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    log.after = node.state().chain_head().0;
    let hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::warn!(error = %e, "mail log: SIGHUP cannot be caught: it will not reopen");
            None
        }
    };
    follow(log, node, hangup, stop)
}

async fn follow(
    mut log: MailLog,
    node: Arc<RaftNode>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match &log.settings.target {
                    Some(Target::File(path)) => {
                        tracing::info!(path = %path.display(), "SIGHUP: reopening the mail log");
                        log.reopen = true;
                    }
                    _ => tracing::info!("SIGHUP: no mail log file to reopen"),
                }
                false
            }
            _ = stop.cancelled() => true,
        };
        let state = node.state();
        log = match tokio::task::spawn_blocking(move || {
            log.step(&state);
            log
        })
        .await
        {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(error = %e, "mail log task");
                return;
            }
        };
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &std::path::Path) -> MailLog {
        let settings = Settings {
            target: Some(Target::File(path.to_path_buf())),
            format: Format::Text,
        };
        MailLog::open(settings, 1).unwrap()
    }

    fn written(log: &MailLog, stage: &'static str) -> u64 {
        log.metrics.lines.get_or_create(&StageLabel { stage }).get()
    }

    #[test]
    fn lines_are_appended_whole_and_counted_by_stage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/mail.log");
        let mut log = file(&path);
        log.write("a\nb\n", &["received", "delivered"]);
        log.write("c\n", &["delivered"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\nc\n");
        assert_eq!(
            (written(&log, "received"), written(&log, "delivered")),
            (1, 2)
        );
        assert_eq!(log.metrics.dropped.get(), 0);
    }

    #[test]
    fn lines_that_cannot_be_written_are_dropped_and_counted() {
        let mut log = file(std::path::Path::new("/dev/full"));
        log.write("a\nb\n", &["received", "delivered"]);
        assert_eq!(log.metrics.dropped.get(), 2);
        assert_eq!(written(&log, "received"), 0);
        assert!(log.failing && log.reopen, "the file is to be opened again");
    }
}
