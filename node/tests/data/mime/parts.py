"""The leaf parts of each message, as Python's email package decodes them.

The independent reading of the differential test (node/tests/mime_differential.rs):
for every *.eml in the directory given, one JSON line naming the file and, for every
leaf part, the SHA-256 of its decoded bytes and, for text parts, of its text as
UTF-8. Parts Python could not decode, where it hands back the encoded text itself,
are marked so, as are empty ones; the test does not hold Bulwark to those. A message
Python's own parser fails on (it raises on some RFC 2231 parameters) is reported
with the error and no parts.
"""

import email
import email.errors
import hashlib
import json
import pathlib
import sys
from email import policy

UNDECODABLE = (email.errors.InvalidBase64LengthDefect,)


def as_sent(part):
    """The part's body undecoded, as get_payload(decode=True) falls back to it."""
    text = part.get_payload()
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("raw-unicode-escape")


def leaf(part):
    payload = part.get_payload(decode=True)
    if payload is None:
        return None
    entry = {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "len": len(payload),
        "type": part.get_content_type(),
        "defects": [type(d).__name__ for d in part.defects],
        "head": payload[:40].decode("latin-1"),
    }
    cte = str(part.get("content-transfer-encoding", "")).lower()
    if any(isinstance(d, UNDECODABLE) for d in part.defects):
        entry["skip"] = "python returns the encoded text"
    elif cte in ("x-uuencode", "uuencode", "uue", "x-uue") and payload == as_sent(part):
        entry["skip"] = "python returns the encoded text"
    elif not payload.strip():
        entry["skip"] = "empty"
    if part.get_content_maintype() == "text":
        # The text as its charset reads it; without one, as UTF-8 (the reading of
        # clients that guess, and of Bulwark's parser).
        entry["text_sha256"] = []
        for charset in (part.get_content_charset(), "utf-8"):
            try:
                text = payload.decode(charset or "utf-8", "replace")
            except LookupError:
                continue
            entry["text_sha256"].append(hashlib.sha256(text.encode("utf-8")).hexdigest())
    return entry


def main():
    directory = pathlib.Path(sys.argv[1])
    for path in sorted(directory.glob("*.eml")):
        parts = []
        try:
            message = email.message_from_bytes(path.read_bytes(), policy=policy.compat32)
            for part in message.walk():
                if part.is_multipart():
                    continue
                entry = leaf(part)
                if entry is not None:
                    parts.append(entry)
        except Exception as error:  # Python's own parser gave up on this message.
            print(json.dumps({"file": path.name, "parts": [], "error": repr(error)}))
            continue
        print(json.dumps({"file": path.name, "parts": parts}))


if __name__ == "__main__":
    main()
