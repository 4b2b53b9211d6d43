//! Parse and scan arbitrary bytes as a received message, through the whole content
//! pipeline (MIME parsing, unpacking archives, every content engine, the policy):
//! it never panics, never hangs past the scan budget, and the verdict is coherent.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bulwark_node::policy::Policy;
use bulwark_node::scan::{attachments, contents, malware, phishing, spam, Candidate, Scanner};
use bulwark_node::scan::{Engine, Settings};
use bulwark_storage::MessageId;
use libfuzzer_sys::fuzz_target;

fn scanner() -> &'static (Scanner, tokio::runtime::Runtime) {
    static SCANNER: OnceLock<(Scanner, tokio::runtime::Runtime)> = OnceLock::new();
    SCANNER.get_or_init(|| {
        let blocked = attachments::DEFAULT_BLOCKED
            .iter()
            .map(|e| e.to_string())
            .collect();
        let engines: Vec<Box<dyn Engine>> = vec![
            Box::new(malware::MalwareEngine::new(&[], &[]).expect("malware engine")),
            Box::new(attachments::AttachmentEngine::new(blocked)),
            Box::new(spam::SpamEngine::new(&[]).expect("spam rules").0),
            Box::new(phishing::PhishingEngine::new()),
        ];
        let scanner = Scanner::new(Settings {
            engines,
            limits: contents::Limits::default(),
            policy: Policy::default(),
            budget: Duration::from_secs(10),
            local_domains: vec!["example.test".into()],
            auth: None,
            blocklists: None,
            clamd: None,
            trusted_relays: Vec::new(),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        (scanner, runtime)
    })
}

fuzz_target!(|data: &[u8]| {
    let (scanner, runtime) = scanner();
    let rcpt = ["bob@example.test".to_string()];
    let judged = runtime.block_on(scanner.judge(&Candidate {
        id: MessageId::new(1_800_000_000_000, 1),
        mail_from: "alice@sender.test",
        rcpt_to: &rcpt,
        client_ip: "192.0.2.1".parse().unwrap(),
        helo: "mail.sender.test",
        header_from: None,
        body: Arc::new(data.to_vec()),
    }));
    let verdict = judged.verdict;
    assert!(verdict.score.is_finite(), "score {}", verdict.score);
    assert!(
        verdict.engines.iter().all(|e| !e.timed_out),
        "an engine ran past the budget: {:?}",
        verdict.engines
    );
    assert!(verdict.symbols.iter().all(|s| !s.name.is_empty()));
});
