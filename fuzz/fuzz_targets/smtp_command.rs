//! The SMTP command parser on arbitrary lines: it never panics, and what it accepts
//! as a MAIL or RCPT path is an address that can be stored and written back into a
//! header or an SMTP command without changing its meaning.
#![no_main]

use bulwark_node::smtp::command::{parse, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let address = match parse(line) {
        Ok(Command::Mail { from, .. }) => from,
        Ok(Command::Rcpt { to, .. }) => to,
        _ => return,
    };
    assert!(
        !address.chars().any(|c| c.is_control()),
        "control character in {address:?}"
    );
    if let Some((local, domain)) = address.rsplit_once('@') {
        assert!(local.len() <= 64, "local part of {address:?}");
        assert!(domain.len() <= 255, "domain of {address:?}");
    }
});
