//! The `[log]` section: the mail log, one line per message per stage.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::maillog::{Format, Settings, Target};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// Where the mail log goes: a file, relative to data_dir (default `mail.log`);
    /// `-` or `stdout` for standard output, `stderr` for standard error; `off` for
    /// none.
    mail_log: Option<String>,
    /// `text` (`key=value` pairs, the default) or `json` (one object a line).
    mail_log_format: Option<String>,
}

pub(super) fn validate_log(raw: RawLog, data_dir: &Path, problems: &mut Vec<String>) -> Settings {
    let target = match raw.mail_log.as_deref().unwrap_or("mail.log") {
        "off" => None,
        "-" | "stdout" => Some(Target::Stdout),
        "stderr" => Some(Target::Stderr),
        "" => {
            problems.push(
                "log.mail_log is empty: a file name, \"-\" (standard output), \"stderr\" or \
                 \"off\""
                    .into(),
            );
            None
        }
        file => Some(Target::File(data_dir.join(PathBuf::from(file)))),
    };
    let format = match raw.mail_log_format.as_deref().unwrap_or("text") {
        "text" => Format::Text,
        "json" => Format::Json,
        other => {
            problems.push(format!(
                "log.mail_log_format must be \"text\" or \"json\", not {other:?}"
            ));
            Format::Text
        }
    };
    Settings { target, format }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Result<Settings, Vec<String>> {
        let raw: RawLog = toml::from_str(toml).unwrap();
        let mut problems = Vec::new();
        let settings = validate_log(raw, Path::new("/srv/bulwark"), &mut problems);
        match problems.is_empty() {
            true => Ok(settings),
            false => Err(problems),
        }
    }

    #[test]
    fn the_mail_log_is_a_text_file_in_the_data_directory_by_default() {
        assert_eq!(
            settings("").unwrap(),
            Settings {
                target: Some(Target::File("/srv/bulwark/mail.log".into())),
                format: Format::Text,
            }
        );
        let s = settings("mail_log = \"/var/log/bulwark/mail.log\"\nmail_log_format = \"json\"")
            .unwrap();
        assert_eq!(
            s.target,
            Some(Target::File("/var/log/bulwark/mail.log".into()))
        );
        assert_eq!(s.format, Format::Json);
    }

    #[test]
    fn standard_streams_and_off() {
        for (written, target) in [
            ("-", Some(Target::Stdout)),
            ("stdout", Some(Target::Stdout)),
            ("stderr", Some(Target::Stderr)),
            ("off", None),
        ] {
            let s = settings(&format!("mail_log = \"{written}\"")).unwrap();
            assert_eq!(s.target, target, "{written}");
        }
    }

    #[test]
    fn every_mistake_is_reported() {
        let problems = settings("mail_log = \"\"\nmail_log_format = \"xml\"").unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("log.mail_log is empty"),
            "{problems:?}"
        );
        assert!(problems[1].contains("\"xml\""), "{problems:?}");
    }
}
