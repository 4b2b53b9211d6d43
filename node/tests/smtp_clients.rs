//! Real SMTP clients against a real node: Python's smtplib (8BITMIME, SMTPUTF8,
//! STARTTLS), the mail-send crate (STARTTLS, MIME with an attachment, BDAT) and raw
//! sessions (CHUNKING, PIPELINING, dot-stuffing). Each test checks what the client
//! was told, the `message.received` event, and the body stored byte for byte: our
//! `Received` header, then the message exactly as the client meant it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Node, Reply, Smtp};
use mail_send::mail_builder::MessageBuilder;
use mail_send::smtp::message::{Message, Parameters};
use mail_send::SmtpClientBuilder;
use serde_json::{json, Value};

/// A self-signed STARTTLS certificate for `mx.example.test`, `localhost` and
/// `127.0.0.1`. It lives in its own directory: the node checks that the files exist
/// when it starts, before its own directory could hold them.
struct Cert {
    dir: tempfile::TempDir,
}

impl Cert {
    fn new() -> Cert {
        let dir = tempfile::tempdir().unwrap();
        let names = ["mx.example.test", "localhost", "127.0.0.1"].map(String::from);
        let generated = rcgen::generate_simple_self_signed(names.to_vec()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), generated.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            generated.key_pair.serialize_pem(),
        )
        .unwrap();
        Cert { dir }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The `[smtp]` lines that enable STARTTLS with this certificate.
    fn smtp_lines(&self) -> String {
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            self.cert_path().display().to_string(),
            self.dir.path().join("key.pem").display().to_string()
        )
    }
}

/// Sends one message with `smtplib.SMTP.sendmail`, as `spec` says: `helo`, `from`,
/// `to`, `options` (MAIL parameters), `message` (hex), and for STARTTLS `cafile`
/// (the certificate is verified against it) and `tls12` (TLS 1.2 at most). Prints
/// the EHLO keywords before and after TLS, the TLS version and cipher, the refused
/// recipients and the reply to the end of data.
const SMTPLIB: &str = r#"
import json, smtplib, ssl, sys

host, port, spec = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
replies = []

class Client(smtplib.SMTP):
    def data(self, msg):
        code, text = super().data(msg)
        replies.append([code, text.decode()])
        return code, text

out = {}
with Client(host, port, local_hostname=spec["helo"]) as s:
    s.ehlo()
    out["features"] = sorted(s.esmtp_features)
    if "cafile" in spec:
        ctx = ssl.create_default_context(cafile=spec["cafile"])
        if spec.get("tls12"):
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        s.starttls(context=ctx)
        s.ehlo()
        out["tls_features"] = sorted(s.esmtp_features)
        out["tls_version"] = s.sock.version()
        out["tls_cipher"] = s.sock.cipher()[0]
    out["refused"] = s.sendmail(
        spec["from"], spec["to"], bytes.fromhex(spec["message"]), mail_options=spec["options"]
    )
out["replies"] = replies
print(json.dumps(out))
"#;

fn smtplib(node: &Node, spec: Value) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(SMTPLIB)
        .arg(node.smtp.ip().to_string())
        .arg(node.smtp.port().to_string())
        .arg(spec.to_string())
        .env("PYTHONUTF8", "1")
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "smtplib failed:\n{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The id in `... Ok: queued as ID` (any reply text).
fn queued_id(text: &str) -> String {
    assert!(text.contains("Ok: queued as "), "{text:?}");
    text.rsplit(' ').next().unwrap().to_string()
}

/// smtplib's one end-of-data reply, checked; returns the message id.
fn smtplib_queued(out: &Value) -> String {
    assert_eq!(out["refused"], json!({}), "{out}");
    let replies = out["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 1, "{out}");
    assert_eq!(replies[0][0], 250, "{out}");
    let text = replies[0][1].as_str().unwrap();
    assert!(text.starts_with("2.0.0 Ok: queued as "), "{out}");
    queued_id(text)
}

/// The `message.received` event of message `id`.
fn received_event(node: &Node, id: &str) -> Value {
    let events = node.events("message.received");
    events
        .iter()
        .find(|e| e["message_id"] == id)
        .unwrap_or_else(|| panic!("no message.received event for {id} in {events:#?}"))
        .clone()
}

/// What every `message.received` event says about the envelope and the client.
fn check_event(event: &Value, id: &str, helo: &str, from: &str, to: &[&str], protocol: &str) {
    assert_eq!(event["type"], "message.received", "{event:#}");
    assert_eq!(event["message_id"], id, "{event:#}");
    assert_eq!(event["email"]["local_id"], id, "{event:#}");
    assert_eq!(event["email"]["sender"]["address"], from, "{event:#}");
    assert_eq!(event["email"]["to"]["address"], json!(to), "{event:#}");
    assert_eq!(event["source"]["ip"], "127.0.0.1", "{event:#}");
    assert_eq!(event["source"]["domain"], helo, "{event:#}");
    assert_eq!(event["smtp"]["protocol"], protocol, "{event:#}");
    assert_eq!(event["action"], "deliver", "{event:#}");
}

/// Splits a stored body into the `Received` header we prepended (with its folded
/// lines) and what follows it.
fn split_received(stored: &[u8]) -> (String, &[u8]) {
    assert!(
        stored.starts_with(b"Authentication-Results: mx.example.test;"),
        "{:?}",
        String::from_utf8_lossy(stored)
    );
    let (_, stored) = split_header(stored);
    assert!(
        stored.starts_with(b"Received: "),
        "{:?}",
        String::from_utf8_lossy(stored)
    );
    split_header(stored)
}

/// The first (folded) header field of `stored` and what follows it.
fn split_header(stored: &[u8]) -> (String, &[u8]) {
    let mut end = 0;
    loop {
        let nl = stored[end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a CRLF ends the header field");
        end += nl + 2;
        if stored.get(end) != Some(&b'\t') {
            break;
        }
    }
    let header = String::from_utf8(stored[..end].to_vec()).expect("a UTF-8 header field");
    (header, &stored[end..])
}

/// Our `Received` header: who, how and which message; the date ends it.
fn check_received(header: &str, helo: &str, protocol: &str, id: &str) {
    let start = format!(
        "Received: from {helo} ([127.0.0.1])\r\n\tby mx.example.test (Bulwark) with {protocol} id {id}"
    );
    assert!(header.starts_with(&start), "{header:?}");
    assert!(header.ends_with(" +0000\r\n"), "{header:?}");
}

/// The stored body of `id` is our `Received` header and then exactly `sent`; returns
/// the header. The node must be stopped (or this stops it).
fn check_stored(node: &mut Node, id: &str, sent: &[u8], size: &Value) -> String {
    let stored = node.stop_and_read_body(id);
    assert_eq!(
        size,
        &json!(stored.len()),
        "the event's size is the stored size"
    );
    let (header, rest) = split_received(&stored);
    assert_eq!(
        String::from_utf8_lossy(rest),
        String::from_utf8_lossy(sent),
        "stored body of {id}"
    );
    assert_eq!(rest, sent, "stored body of {id} (bytes)");
    header
}

fn expect(reply: &Reply, code: u16, text_start: &str) {
    assert_eq!(reply.code, code, "{reply:?}");
    assert!(reply.text().starts_with(text_start), "{reply:?}");
}

#[test]
fn clients_python_smtplib_8bitmime_body() {
    let mut node = Node::start("");
    let mut message = b"From: Sender <sender@sender.test>\r\n\
        To: <latin@example.test>\r\n\
        Subject: 8-bit body\r\n\
        Message-ID: <py-8bit@sender.test>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=iso-8859-1\r\n\
        Content-Transfer-Encoding: 8bit\r\n\
        \r\n\
        Caf\xe9 cr\xe8me br\xfbl\xe9e, \xe0 bient\xf4t\r\n\
        UTF-8 as well: \xc3\xa9t\xc3\xa9 \xe2\x9c\x93\r\n\
        .a line that starts with a dot\r\n\
        Every octet from 0x80 up: "
        .to_vec();
    message.extend(0x80..=0xffu8);
    message.extend_from_slice(b"\r\n");

    let out = smtplib(
        &node,
        json!({
            "helo": "py.client.test",
            "from": "sender@sender.test",
            "to": ["latin@example.test"],
            "options": ["BODY=8BITMIME"],
            "message": hex::encode(&message),
        }),
    );
    assert_eq!(
        out["features"],
        json!([
            "8bitmime",
            "chunking",
            "enhancedstatuscodes",
            "pipelining",
            "size",
            "smtputf8"
        ]),
        "no STARTTLS without a certificate: {out}"
    );
    let id = smtplib_queued(&out);

    let event = received_event(&node, &id);
    check_event(
        &event,
        &id,
        "py.client.test",
        "sender@sender.test",
        &["latin@example.test"],
        "ESMTP",
    );
    assert_eq!(event["smtp"]["eight_bit"], true, "{event:#}");
    assert_eq!(event["smtp"]["smtputf8"], false, "{event:#}");
    assert_eq!(event["email"]["subject"], "8-bit body");
    assert_eq!(event["email"]["message_id"], "<py-8bit@sender.test>");
    assert_eq!(
        event["email"]["from"]["address"],
        json!(["sender@sender.test"])
    );
    assert!(event.get("tls").is_none(), "{event:#}");

    let header = check_stored(&mut node, &id, &message, &event["size"]);
    check_received(&header, "py.client.test", "ESMTP", &id);
    assert!(
        header.contains("\r\n\tfor <latin@example.test>;\r\n\t"),
        "{header:?}"
    );
}

#[test]
fn clients_python_smtplib_smtputf8_address_and_subject() {
    let mut node = Node::start("domains = [\"example.test\", \"exämple.test\"]");
    let message = "From: André <andré@sender.test>\r\n\
        To: José <josé@exämple.test>\r\n\
        Subject: Grüße aus Köln ✓\r\n\
        Message-ID: <utf8-1@sender.test>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: 8bit\r\n\
        \r\n\
        Hallo José, schöne Grüße! ✓\r\n"
        .as_bytes();
    let out = smtplib(
        &node,
        json!({
            "helo": "py.client.test",
            "from": "andré@sender.test",
            "to": ["josé@exämple.test"],
            "options": ["SMTPUTF8"],
            "message": hex::encode(message),
        }),
    );
    let id = smtplib_queued(&out);

    // Without SMTPUTF8 the same addresses are refused, whichever side is non-ASCII.
    let mut s = Smtp::ehlo(node.smtp);
    expect(&s.cmd("MAIL FROM:<andré@sender.test>"), 553, "5.6.7");
    expect(&s.cmd("MAIL FROM:<a@sender.test>"), 250, "2.1.0");
    expect(&s.cmd("RCPT TO:<josé@exämple.test>"), 553, "5.6.7");
    expect(&s.cmd("QUIT"), 221, "2.0.0");

    let event = received_event(&node, &id);
    check_event(
        &event,
        &id,
        "py.client.test",
        "andré@sender.test",
        &["josé@exämple.test"],
        "UTF8SMTP",
    );
    assert_eq!(event["smtp"]["smtputf8"], true, "{event:#}");
    assert_eq!(event["smtp"]["eight_bit"], false, "{event:#}");
    assert_eq!(event["email"]["subject"], "Grüße aus Köln ✓");
    assert_eq!(event["email"]["message_id"], "<utf8-1@sender.test>");
    assert_eq!(
        event["email"]["from"]["address"],
        json!(["andré@sender.test"])
    );
    assert_eq!(node.events("message.received").len(), 1);

    let header = check_stored(&mut node, &id, message, &event["size"]);
    check_received(&header, "py.client.test", "UTF8SMTP", &id);
    assert!(
        header.contains("\r\n\tfor <josé@exämple.test>;\r\n\t"),
        "{header:?}"
    );
}

#[test]
fn clients_python_smtplib_starttls() {
    let cert = Cert::new();
    let mut node = Node::start(&cert.smtp_lines());
    let cafile = cert.cert_path().display().to_string();
    let plain_features = [
        "8bitmime",
        "chunking",
        "enhancedstatuscodes",
        "pipelining",
        "size",
        "smtputf8",
    ];

    // TLS 1.3 (what both sides prefer), verifying the certificate for 127.0.0.1.
    let ascii =
        b"From: <tls@sender.test>\r\nTo: <secure@example.test>\r\nSubject: over TLS 1.3\r\n\r\n\
        encrypted \xc3\xa9\r\n..two dots\r\n"
            .to_vec();
    let out13 = smtplib(
        &node,
        json!({
            "helo": "tls.client.test",
            "from": "tls@sender.test",
            "to": ["secure@example.test"],
            "options": ["BODY=8BITMIME"],
            "message": hex::encode(&ascii),
            "cafile": cafile,
        }),
    );
    // TLS 1.2 at most, with SMTPUTF8.
    let utf8 = "From: <zoë@sender.test>\r\nTo: <zoë@example.test>\r\nSubject: über TLS 1.2\r\n\r\nbonjour ✓\r\n"
        .as_bytes()
        .to_vec();
    let out12 = smtplib(
        &node,
        json!({
            "helo": "tls12.client.test",
            "from": "zoë@sender.test",
            "to": ["zoë@example.test"],
            "options": ["SMTPUTF8"],
            "message": hex::encode(&utf8),
            "cafile": cafile,
            "tls12": true,
        }),
    );

    let mut with_starttls = plain_features.to_vec();
    with_starttls.push("starttls");
    for out in [&out13, &out12] {
        assert_eq!(out["features"], json!(with_starttls), "before TLS: {out}");
        assert_eq!(
            out["tls_features"],
            json!(plain_features),
            "after TLS: {out}"
        );
    }
    assert_eq!(out13["tls_version"], "TLSv1.3", "{out13}");
    assert_eq!(out12["tls_version"], "TLSv1.2", "{out12}");

    let id13 = smtplib_queued(&out13);
    let id12 = smtplib_queued(&out12);
    assert_ne!(id13, id12);
    let ev13 = received_event(&node, &id13);
    let ev12 = received_event(&node, &id12);
    check_event(
        &ev13,
        &id13,
        "tls.client.test",
        "tls@sender.test",
        &["secure@example.test"],
        "ESMTPS",
    );
    check_event(
        &ev12,
        &id12,
        "tls12.client.test",
        "zoë@sender.test",
        &["zoë@example.test"],
        "UTF8SMTPS",
    );
    assert_eq!(ev13["email"]["subject"], "over TLS 1.3");
    assert_eq!(ev12["email"]["subject"], "über TLS 1.2");
    for (event, out) in [(&ev13, &out13), (&ev12, &out12)] {
        assert_eq!(event["tls"]["established"], true, "{event:#}");
        assert_eq!(event["tls"]["version"], out["tls_version"], "{event:#}");
        // An address, not a name, so no SNI.
        assert_eq!(
            event["tls"]["client"]["server_name"],
            Value::Null,
            "{event:#}"
        );
    }
    // rustls names TLS 1.3 suites TLS13_*, OpenSSL (and IANA) TLS_*.
    let cipher13 = ev13["tls"]["cipher"].as_str().unwrap().to_string();
    assert_eq!(
        cipher13.replacen("TLS13_", "TLS_", 1),
        out13["tls_cipher"].as_str().unwrap(),
        "{ev13:#}"
    );
    // TLS 1.2: IANA TLS_ECDHE_ECDSA_WITH_..., OpenSSL ECDHE-ECDSA-...
    let cipher12 = ev12["tls"]["cipher"].as_str().unwrap().to_string();
    assert!(cipher12.starts_with("TLS_ECDHE_ECDSA_WITH_"), "{ev12:#}");
    assert!(
        out12["tls_cipher"]
            .as_str()
            .unwrap()
            .starts_with("ECDHE-ECDSA-"),
        "{out12}"
    );

    // smtplib stuffed "..two dots" to "...two dots"; the node unstuffed it again.
    let header13 = check_stored(&mut node, &id13, &ascii, &ev13["size"]);
    check_received(&header13, "tls.client.test", "ESMTPS", &id13);
    let using13 =
        format!("\r\n\t(using TLSv1.3 with cipher {cipher13})\r\n\tfor <secure@example.test>;");
    assert!(header13.contains(&using13), "{header13:?}");
    let header12 = check_stored(&mut node, &id12, &utf8, &ev12["size"]);
    check_received(&header12, "tls12.client.test", "UTF8SMTPS", &id12);
    let using12 =
        format!("\r\n\t(using TLSv1.2 with cipher {cipher12})\r\n\tfor <zoë@example.test>;");
    assert!(header12.contains(&using12), "{header12:?}");
}

#[test]
fn clients_mail_send_starttls_mime_attachment_and_bdat() {
    let cert = Cert::new();
    let mut node = Node::start(&cert.smtp_lines());
    let port = node.smtp.port();

    let attachment: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let mime = MessageBuilder::new()
        .from(("Zoë Sender", "zoe@sender.test"))
        .to(vec![("Ana", "ana@example.test"), ("Bo", "bo@example.test")])
        .subject("Résumé ✓ attached")
        .message_id("rust-1@sender.test")
        .date(1_764_300_000i64)
        .text_body("Grüße aus Köln — voilà le résumé ✓\n.a line with a leading dot\nbye\n")
        .attachment("application/octet-stream", "data.bin", attachment.clone())
        .write_to_vec()
        .unwrap();
    // Sent with BDAT: exact octets, a CRLF.CRLF inside, 8-bit, no dot-stuffing.
    let chunked = b"From: <zoe@sender.test>\r\nSubject: by BDAT\r\n\r\n\
        line\r\n.\r\n.leading dot kept as is\r\nna\xc3\xafve \xe9\r\n"
        .to_vec();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ehlo_again, starttls_again, bdat_reply) = runtime.block_on(async {
        // "localhost": the client sends it as SNI (certificate checks are off).
        let mut client = SmtpClientBuilder::new("localhost", port)
            .implicit_tls(false)
            .allow_invalid_certs()
            .say_ehlo(true)
            .helo_host("rust.client.test")
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .expect("connect with STARTTLS");
        let message = Message::new(
            "zoe@sender.test",
            ["ana@example.test", "bo@example.test"],
            mime.clone(),
        );
        client.send(message).await.expect("send over STARTTLS");

        let ehlo_again = client.cmd(b"EHLO rust.client.test\r\n").await.unwrap();
        let starttls_again = client.cmd(b"STARTTLS\r\n").await.unwrap();

        let mut eight_bit = Parameters::new();
        eight_bit.add(("BODY", "8BITMIME"));
        client
            .mail_from("zoe@sender.test", &eight_bit)
            .await
            .unwrap();
        client
            .rcpt_to("ana@example.test", &Parameters::new())
            .await
            .unwrap();
        let bdat = [
            format!("BDAT {} LAST\r\n", chunked.len()).as_bytes(),
            &chunked,
        ]
        .concat();
        let bdat_reply = client.cmd(bdat).await.unwrap();
        client.quit().await.unwrap();
        (ehlo_again, starttls_again, bdat_reply)
    });
    assert_eq!(ehlo_again.code, 250, "{ehlo_again:?}");
    assert!(ehlo_again.message.contains("CHUNKING"), "{ehlo_again:?}");
    assert!(!ehlo_again.message.contains("STARTTLS"), "{ehlo_again:?}");
    assert_eq!(starttls_again.code, 503, "{starttls_again:?}");
    assert_eq!(bdat_reply.code, 250, "{bdat_reply:?}");
    let bdat_id = queued_id(&bdat_reply.message);

    let events = node.wait_events("message.received", 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    let sent = &events[0];
    let id = sent["message_id"].as_str().unwrap().to_string();
    assert_ne!(id, bdat_id);
    assert_eq!(events[1]["message_id"], bdat_id);
    check_event(
        sent,
        &id,
        "rust.client.test",
        "zoe@sender.test",
        &["ana@example.test", "bo@example.test"],
        "ESMTPS",
    );
    assert_eq!(sent["email"]["subject"], "Résumé ✓ attached");
    assert_eq!(sent["email"]["message_id"], "<rust-1@sender.test>");
    assert_eq!(sent["email"]["from"]["address"], json!(["zoe@sender.test"]));
    assert_eq!(sent["smtp"]["eight_bit"], false);
    assert!(sent["tls"]["version"]
        .as_str()
        .unwrap()
        .starts_with("TLSv1."));
    assert_eq!(sent["tls"]["client"]["server_name"], "localhost");
    check_event(
        &events[1],
        &bdat_id,
        "rust.client.test",
        "zoe@sender.test",
        &["ana@example.test"],
        "ESMTPS",
    );
    assert_eq!(events[1]["smtp"]["eight_bit"], true);
    assert_eq!(events[1]["email"]["subject"], "by BDAT");

    // mail-send ends the data with CRLF.CRLF whatever the message ends with, so the
    // content it sends is the message and one more CRLF.
    let expected = [&mime[..], b"\r\n"].concat();
    let header = check_stored(&mut node, &id, &expected, &sent["size"]);
    check_received(&header, "rust.client.test", "ESMTPS", &id);
    let cipher = sent["tls"]["cipher"].as_str().unwrap();
    assert!(
        header.contains(&format!(" with cipher {cipher})")),
        "{header:?}"
    );
    assert!(!header.contains("\tfor <"), "two recipients: {header:?}");
    // The attachment survives the trip (mail-builder encodes it in base64).
    let stored = node.stop_and_read_body(&id);
    let parsed = mail_parser::MessageParser::default()
        .parse(&stored)
        .unwrap();
    assert_eq!(parsed.attachment(0).unwrap().contents(), &attachment[..]);
    assert!(parsed
        .body_text(0)
        .unwrap()
        .contains("voilà le résumé ✓\n.a line with a leading dot\n"));

    let header = check_stored(&mut node, &bdat_id, &chunked, &events[1]["size"]);
    check_received(&header, "rust.client.test", "ESMTPS", &bdat_id);
    assert!(
        header.contains("\r\n\tfor <ana@example.test>;"),
        "{header:?}"
    );
}

#[test]
fn clients_bdat_chunks_are_counted_and_stored_exactly() {
    let mut node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    let chunks: [&[u8]; 3] = [
        b"From: <bdat@sender.test>\r\nSubject: chunked\r\n\r\nfirst line\r\n",
        // An end of data and a command inside a counted chunk are content.
        b"before\r\n.\r\nRSET\r\n.leading dot stays\r\n..two stay too\r\ncaf\xc3\xa9 \xe9\xff\r",
        // The CRLF split across chunks is one CRLF, not a bare CR and a bare LF.
        b"\nlast line\r\n",
    ];
    expect(
        &s.cmd("MAIL FROM:<bdat@sender.test> BODY=8BITMIME"),
        250,
        "2.1.0",
    );
    expect(&s.cmd("RCPT TO:<chunky@example.test>"), 250, "2.1.5");
    for chunk in chunks {
        s.send(&[format!("BDAT {}\r\n", chunk.len()).as_bytes(), chunk].concat());
        let r = s.read_reply();
        expect(&r, 250, &format!("2.0.0 {} octets received", chunk.len()));
    }
    // The end: an empty last chunk.
    let r = s.cmd("BDAT 0 LAST");
    expect(&r, 250, "2.0.0 Ok: queued as ");
    let first = r.queued_id();

    // Everything pipelined in one write: two transactions, the first in two chunks,
    // the second without a final CRLF, then QUIT.
    let second: &[u8] = b"Subject: pipelined\r\n\r\nin one write\r\n";
    let third: &[u8] = b"Subject: no final newline\r\n\r\nthe end";
    let mut write = Vec::new();
    write.extend_from_slice(
        b"MAIL FROM:<pipe@sender.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n",
    );
    write.extend_from_slice(b"BDAT 10\r\n");
    write.extend_from_slice(&second[..10]);
    write.extend_from_slice(format!("BDAT {} LAST\r\n", second.len() - 10).as_bytes());
    write.extend_from_slice(&second[10..]);
    write.extend_from_slice(b"MAIL FROM:<> BODY=7BIT\r\nRCPT TO:<c@example.test>\r\n");
    write.extend_from_slice(format!("BDAT {} LAST\r\n", third.len()).as_bytes());
    write.extend_from_slice(third);
    write.extend_from_slice(b"QUIT\r\n");
    s.send(&write);
    expect(&s.read_reply(), 250, "2.1.0");
    expect(&s.read_reply(), 250, "2.1.5");
    expect(&s.read_reply(), 250, "2.1.5");
    expect(&s.read_reply(), 250, "2.0.0 10 octets received");
    let second_id = s.read_reply().queued_id();
    expect(&s.read_reply(), 250, "2.1.0");
    expect(&s.read_reply(), 250, "2.1.5");
    let third_id = s.read_reply().queued_id();
    expect(&s.read_reply(), 221, "2.0.0");
    assert!(s.is_closed());

    let events = node.wait_events("message.received", 3);
    assert_eq!(events.len(), 3, "{events:#?}");
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.as_str(), second_id.as_str(), third_id.as_str()]);
    check_event(
        &events[0],
        &first,
        "client.test",
        "bdat@sender.test",
        &["chunky@example.test"],
        "ESMTP",
    );
    assert_eq!(events[0]["smtp"]["eight_bit"], true);
    assert_eq!(events[0]["email"]["subject"], "chunked");
    check_event(
        &events[1],
        &second_id,
        "client.test",
        "pipe@sender.test",
        &["a@example.test", "b@example.test"],
        "ESMTP",
    );
    check_event(
        &events[2],
        &third_id,
        "client.test",
        "",
        &["c@example.test"],
        "ESMTP",
    );
    assert_eq!(events[2]["smtp"]["eight_bit"], false);

    let header = check_stored(&mut node, &first, &chunks.concat(), &events[0]["size"]);
    check_received(&header, "client.test", "ESMTP", &first);
    check_stored(&mut node, &second_id, second, &events[1]["size"]);
    // A message must end with CRLF: one is added when the last chunk lacks it.
    check_stored(
        &mut node,
        &third_id,
        &[third, b"\r\n"].concat(),
        &events[2]["size"],
    );
}

#[test]
fn clients_pipelining_replies_in_order_and_transactions_follow() {
    let mut node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    s.send(
        b"MAIL FROM:<pipe@sender.test> SIZE=200\r\n\
          RCPT TO:<one@example.test>\r\n\
          RCPT TO:<two@example.test>\r\n\
          RCPT TO:<elsewhere@relay.test>\r\n\
          RCPT TO:<three@example.test>\r\n\
          DATA\r\n",
    );
    expect(&s.read_reply(), 250, "2.1.0");
    expect(&s.read_reply(), 250, "2.1.5");
    expect(&s.read_reply(), 250, "2.1.5");
    expect(
        &s.read_reply(),
        554,
        "5.7.1 <elsewhere@relay.test>: Relay access denied",
    );
    expect(&s.read_reply(), 250, "2.1.5");
    expect(&s.read_reply(), 354, "End data with <CR><LF>.<CR><LF>");
    let first_body = b"Subject: first\r\n\r\nthree recipients of four\r\n";
    s.send(&[&first_body[..], b".\r\n"].concat());
    let first = s.read_reply().queued_id();

    // The next transaction in the same session, its end of data pipelined with QUIT.
    s.send(b"MAIL FROM:<pipe@sender.test>\r\nRCPT TO:<four@example.test>\r\nDATA\r\n");
    expect(&s.read_reply(), 250, "2.1.0");
    expect(&s.read_reply(), 250, "2.1.5");
    expect(&s.read_reply(), 354, "");
    let second_body = b"Subject: second\r\n\r\nsame session\r\n";
    s.send(&[&second_body[..], b".\r\nQUIT\r\n"].concat());
    let second = s.read_reply().queued_id();
    expect(&s.read_reply(), 221, "2.0.0 Bye");
    assert!(s.is_closed());
    assert_ne!(first, second);

    let events = node.wait_events("message.received", 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    check_event(
        &events[0],
        &first,
        "client.test",
        "pipe@sender.test",
        &["one@example.test", "two@example.test", "three@example.test"],
        "ESMTP",
    );
    check_event(
        &events[1],
        &second,
        "client.test",
        "pipe@sender.test",
        &["four@example.test"],
        "ESMTP",
    );
    let rejected = node.wait_events("message.rejected", 1);
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert_eq!(rejected[0]["event"]["reason"], "relay_denied");
    assert_eq!(
        rejected[0]["email"]["to"]["address"],
        json!(["elsewhere@relay.test"])
    );

    let header = check_stored(&mut node, &first, first_body, &events[0]["size"]);
    assert!(!header.contains("\tfor <"), "{header:?}");
    let header = check_stored(&mut node, &second, second_body, &events[1]["size"]);
    assert!(
        header.contains("\r\n\tfor <four@example.test>;"),
        "{header:?}"
    );
}

#[test]
fn clients_dot_stuffed_lines_are_stored_unstuffed() {
    let mut node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    expect(&s.cmd("MAIL FROM:<dots@sender.test>"), 250, "");
    expect(&s.cmd("RCPT TO:<dots@example.test>"), 250, "");
    expect(&s.cmd("DATA"), 354, "");
    // As sent (stuffed) and as meant.
    let lines: [(&str, &str); 9] = [
        ("Subject: dots", "Subject: dots"),
        ("", ""),
        ("..one leading dot", ".one leading dot"),
        ("...two leading dots", "..two leading dots"),
        ("..", "."),
        ("a . in the middle.", "a . in the middle."),
        (".. ", ". "),
        ("..\t.", ".\t."),
        ("..", "."),
    ];
    let mut wire = String::new();
    let mut meant = String::new();
    for (sent, stored) in lines {
        wire.push_str(sent);
        wire.push_str("\r\n");
        meant.push_str(stored);
        meant.push_str("\r\n");
    }
    wire.push_str(".\r\n");
    s.send(wire.as_bytes());
    let id = s.read_reply().queued_id();

    // An empty message: the end of data right after DATA.
    s.send(b"MAIL FROM:<dots@sender.test>\r\nRCPT TO:<dots@example.test>\r\nDATA\r\n");
    expect(&s.read_reply(), 250, "2.1.0");
    expect(&s.read_reply(), 250, "2.1.5");
    expect(&s.read_reply(), 354, "");
    let empty = s.cmd(".").queued_id();
    expect(&s.cmd("QUIT"), 221, "");

    let events = node.wait_events("message.received", 2);
    assert_eq!(events.len(), 2, "{events:#?}");
    check_event(
        &events[0],
        &id,
        "client.test",
        "dots@sender.test",
        &["dots@example.test"],
        "ESMTP",
    );
    assert_eq!(events[0]["email"]["subject"], "dots");
    // Without From, Date, Message-ID, To and Subject it reaches the tag score.
    let mut empty_event = events[1].clone();
    assert_eq!(empty_event["action"], "tag", "{empty_event:#}");
    empty_event["action"] = json!("deliver");
    check_event(
        &empty_event,
        &empty,
        "client.test",
        "dots@sender.test",
        &["dots@example.test"],
        "ESMTP",
    );
    assert!(
        events[1]["email"].get("subject").is_none(),
        "{:#}",
        events[1]
    );
    check_stored(&mut node, &id, meant.as_bytes(), &events[0]["size"]);
    check_stored(&mut node, &empty, b"", &events[1]["size"]);
}

#[test]
fn clients_event_fields_ids_and_received_header() {
    let mut node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    let port = s.writer().local_addr().unwrap().port();
    let first_body = "From: Alice <alice@sender.test>\r\n\
        To: Bob <bob@example.test>, carol@example.test\r\n\
        Subject: =?utf-8?q?Quarterly_r=C3=A9port?=\r\n\
        Message-ID: <q3-report@sender.test>\r\n\
        Date: Fri, 28 Nov 2025 03:20:00 +0000\r\n\
        \r\n\
        Numbers attached.\r\n";
    let r = s.send_message(
        "alice@sender.test",
        &["bob@example.test", "carol@example.test"],
        first_body,
    );
    expect(&r, 250, "2.0.0 Ok: queued as ");
    let first = r.queued_id();
    let second_body = "Subject: second\r\n\r\nsame session\r\n";
    let second = s
        .send_message("alice@sender.test", &["bob@example.test"], second_body)
        .queued_id();
    // A bounce: the null sender.
    let third_body = "Subject: Undelivered Mail\r\n\r\nbounced\r\n";
    let third = s
        .send_message("", &["postmaster@example.test"], third_body)
        .queued_id();
    expect(&s.cmd("QUIT"), 221, "");
    // HELO instead of EHLO: plain SMTP.
    let mut old = Smtp::connect(node.smtp);
    expect(&old.cmd("HELO old.client.test"), 250, "mx.example.test");
    let fourth_body = "Subject: old school\r\n\r\nhi\r\n";
    let fourth = old
        .send_message("old@sender.test", &["bob@example.test"], fourth_body)
        .queued_id();
    expect(&old.cmd("QUIT"), 221, "");

    let ids = [&first, &second, &third, &fourth];
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(id.len(), 26, "{id}");
        assert!(
            ids[i + 1..].iter().all(|other| other != id),
            "ids must differ: {ids:?}"
        );
    }

    let events = node.wait_events("message.received", 4);
    assert_eq!(events.len(), 4, "{events:#?}");
    let e = &events[0];
    check_event(
        e,
        &first,
        "client.test",
        "alice@sender.test",
        &["bob@example.test", "carol@example.test"],
        "ESMTP",
    );
    assert_eq!(e["source"]["port"], port, "{e:#}");
    assert_eq!(e["email"]["subject"], "Quarterly réport");
    assert_eq!(e["email"]["message_id"], "<q3-report@sender.test>");
    assert_eq!(e["email"]["from"]["address"], json!(["alice@sender.test"]));
    assert_eq!(e["smtp"]["smtputf8"], false);
    assert_eq!(e["smtp"]["eight_bit"], false);
    assert!(e.get("tls").is_none(), "{e:#}");
    for timing in ["session_ms", "transfer_ms", "scan_ms"] {
        assert!(e["timings"][timing].is_u64(), "{e:#}");
    }
    assert!(e["seq"].as_u64().unwrap() < events[1]["seq"].as_u64().unwrap());
    check_event(
        &events[1],
        &second,
        "client.test",
        "alice@sender.test",
        &["bob@example.test"],
        "ESMTP",
    );
    assert_eq!(events[1]["source"]["port"], port, "same session, same port");
    assert!(
        events[1]["email"].get("message_id").is_none(),
        "{:#}",
        events[1]
    );
    check_event(
        &events[2],
        &third,
        "client.test",
        "",
        &["postmaster@example.test"],
        "ESMTP",
    );
    assert_eq!(events[2]["email"]["subject"], "Undelivered Mail");
    check_event(
        &events[3],
        &fourth,
        "old.client.test",
        "old@sender.test",
        &["bob@example.test"],
        "SMTP",
    );

    let header = check_stored(&mut node, &first, first_body.as_bytes(), &e["size"]);
    check_received(&header, "client.test", "ESMTP", &first);
    assert!(!header.contains("\tfor <"), "{header:?}");
    for (id, body, event, helo, protocol, rcpt) in [
        (
            &second,
            second_body,
            &events[1],
            "client.test",
            "ESMTP",
            "bob@example.test",
        ),
        (
            &third,
            third_body,
            &events[2],
            "client.test",
            "ESMTP",
            "postmaster@example.test",
        ),
        (
            &fourth,
            fourth_body,
            &events[3],
            "old.client.test",
            "SMTP",
            "bob@example.test",
        ),
    ] {
        let header = check_stored(&mut node, id, body.as_bytes(), &event["size"]);
        check_received(&header, helo, protocol, id);
        assert!(
            header.contains(&format!("\r\n\tfor <{rcpt}>;\r\n\t")),
            "{header:?}"
        );
    }
}

#[test]
fn clients_the_queued_id_finds_the_message_in_the_event_api() {
    let node = Node::start("");
    let mut s = Smtp::ehlo(node.smtp);
    let first = s
        .send_message(
            "a@sender.test",
            &["b@example.test"],
            "Subject: one\r\n\r\n1\r\n",
        )
        .queued_id();
    let second = s
        .send_message(
            "a@sender.test",
            &["b@example.test"],
            "Subject: two\r\n\r\n2\r\n",
        )
        .queued_id();
    let client = reqwest::blocking::Client::new();
    let get = |query: &str| {
        client
            .get(format!("{}/v1/events?{query}", node.api))
            .bearer_auth(node.token())
            .send()
            .unwrap()
    };
    let page: serde_json::Value = get(&format!("message_id={second}")).json().unwrap();
    // Its reception and its verdict, committed together, and this read of them (on
    // record before the answer); its delivery may have begun meanwhile (each message
    // committed wakes the worker), and its events are left out.
    let events: Vec<&serde_json::Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["type"].as_str().unwrap_or("").starts_with("delivery."))
        .collect();
    assert_eq!(events.len(), 3, "{page}");
    assert_eq!(events[0]["type"], "message.received");
    assert_eq!(events[1]["type"], "scan.verdict");
    assert_eq!(events[2]["type"], "access.read");
    assert!(events.iter().all(|e| e["message_id"] == second.as_str()));
    assert_eq!(events[0]["email"]["subject"], "two");
    let lower: serde_json::Value = get(&format!("message_id={}", first.to_lowercase()))
        .json()
        .unwrap();
    assert_eq!(lower["events"][0]["message_id"], first.as_str());
    let bad = get("message_id=not-an-id");
    assert_eq!(bad.status(), 400);
    assert!(bad.text().unwrap().contains("message_id"));
}
