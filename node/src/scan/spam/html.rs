//! A forgiving, single-pass reading of HTML mail: the text a reader sees, the links
//! with the text shown for them, and how much text is hidden from the reader.
//!
//! It is not an HTML5 parser: it follows tags well enough for mail, never fails, and
//! costs one pass over the markup.

/// What one HTML part shows and hides.
#[derive(Debug, Default)]
pub(super) struct Rendered {
    /// The visible text, whitespace collapsed, one paragraph a line.
    pub text: String,
    /// Every `<a href>` with the text shown for it.
    pub links: Vec<Link>,
    /// Non-blank characters a reader cannot see (hidden by style, zero size or the
    /// text colour equal to the background).
    pub invisible_chars: usize,
}

/// A link as the reader sees it.
#[derive(Debug)]
pub(super) struct Link {
    pub href: String,
    pub text: String,
}

/// Elements whose content is never shown.
const RAW_TEXT: &[&str] = &["script", "style", "title", "template", "textarea"];
/// Elements that start a new paragraph of rendered text.
const BLOCK: &[&str] = &[
    "address",
    "blockquote",
    "br",
    "center",
    "dd",
    "div",
    "dl",
    "dt",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "li",
    "ol",
    "p",
    "pre",
    "table",
    "tr",
    "ul",
];
/// Elements without content or end tag.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

/// Nesting followed at most; deeper elements take the style of the deepest one.
const MAX_DEPTH: usize = 256;

/// The style an open element passes to its content.
#[derive(Clone, Debug, Default)]
struct Frame {
    name: String,
    hidden: bool,
    color: Option<u32>,
    background: Option<u32>,
}

/// Renders one HTML document.
pub(super) fn render(html: &str) -> Rendered {
    let mut out = Rendered::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchor: Option<Link> = None;
    let bytes = html.as_bytes();
    let mut pos = 0;
    let mut text_start = 0;
    while pos < bytes.len() {
        if bytes[pos] != b'<' {
            pos += 1;
            continue;
        }
        emit_text(&html[text_start..pos], &stack, &mut anchor, &mut out);
        pos = match read_markup(html, pos) {
            Markup::Skip(end) => end,
            Markup::Text => {
                // A lone `<` is text.
                text_start = pos;
                pos += 1;
                continue;
            }
            Markup::Tag(tag) => apply_tag(html, &tag, &mut stack, &mut anchor, &mut out),
        };
        text_start = pos;
    }
    emit_text(&html[text_start..], &stack, &mut anchor, &mut out);
    if let Some(link) = anchor.take() {
        out.links.push(link);
    }
    out
}

/// One tag as written.
struct Tag<'a> {
    name: String,
    closing: bool,
    self_closing: bool,
    attributes: Vec<(String, &'a str)>,
    /// Offset just past the tag.
    end: usize,
}

enum Markup<'a> {
    /// A comment, declaration or processing instruction ending at the offset.
    Skip(usize),
    /// Not markup at all.
    Text,
    Tag(Tag<'a>),
}

fn read_markup(html: &str, start: usize) -> Markup<'_> {
    let bytes = html.as_bytes();
    let rest = &html[start..];
    if rest.starts_with("<!--") {
        return Markup::Skip(rest.find("-->").map_or(html.len(), |i| start + i + 3));
    }
    if rest.starts_with("<!") || rest.starts_with("<?") {
        return Markup::Skip(rest.find('>').map_or(html.len(), |i| start + i + 1));
    }
    let mut pos = start + 1;
    let closing = bytes.get(pos) == Some(&b'/');
    if closing {
        pos += 1;
    }
    let name_start = pos;
    while pos < bytes.len() && (bytes[pos].is_ascii_alphanumeric()) {
        pos += 1;
    }
    if pos == name_start || !bytes[name_start].is_ascii_alphabetic() {
        return Markup::Text;
    }
    let name = html[name_start..pos].to_ascii_lowercase();
    let mut attributes = Vec::new();
    let mut self_closing = false;
    loop {
        while pos < bytes.len() && (bytes[pos].is_ascii_whitespace() || bytes[pos] == b'/') {
            self_closing = bytes[pos] == b'/';
            pos += 1;
        }
        if pos >= bytes.len() {
            break;
        }
        if bytes[pos] == b'>' {
            pos += 1;
            break;
        }
        self_closing = false;
        let attr_start = pos;
        while pos < bytes.len()
            && !bytes[pos].is_ascii_whitespace()
            && !matches!(bytes[pos], b'=' | b'>' | b'/')
        {
            pos += 1;
        }
        let attr = html[attr_start..pos].to_ascii_lowercase();
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let mut value = "";
        if bytes.get(pos) == Some(&b'=') {
            pos += 1;
            while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
                pos += 1;
            }
            match bytes.get(pos) {
                Some(&quote @ (b'"' | b'\'')) => {
                    let value_start = pos + 1;
                    let value_end = html[value_start..]
                        .find(quote as char)
                        .map_or(html.len(), |i| value_start + i);
                    value = &html[value_start..value_end];
                    pos = (value_end + 1).min(html.len());
                }
                _ => {
                    let value_start = pos;
                    while pos < bytes.len()
                        && !bytes[pos].is_ascii_whitespace()
                        && bytes[pos] != b'>'
                    {
                        pos += 1;
                    }
                    value = &html[value_start..pos];
                }
            }
        }
        if attr.is_empty() {
            // A stray character such as `"`: step over it.
            pos += 1;
        } else {
            attributes.push((attr, value));
        }
    }
    Markup::Tag(Tag {
        name,
        closing,
        self_closing,
        attributes,
        end: pos,
    })
}

/// Follows one tag; returns the offset where the text after it starts.
fn apply_tag(
    html: &str,
    tag: &Tag<'_>,
    stack: &mut Vec<Frame>,
    anchor: &mut Option<Link>,
    out: &mut Rendered,
) -> usize {
    let name = tag.name.as_str();
    if BLOCK.contains(&name) {
        new_paragraph(&mut out.text);
    }
    if tag.closing {
        if name == "a" {
            if let Some(link) = anchor.take() {
                out.links.push(link);
            }
        }
        if let Some(open) = stack.iter().rposition(|frame| frame.name == name) {
            stack.truncate(open);
        }
        return tag.end;
    }
    if RAW_TEXT.contains(&name) && !tag.self_closing {
        // Nothing inside is shown: resume after the matching end tag.
        let close = format!("</{name}");
        return find_ascii_ci(&html[tag.end..], &close).map_or(html.len(), |i| {
            let after = tag.end + i;
            html[after..]
                .find('>')
                .map_or(html.len(), |j| after + j + 1)
        });
    }
    if name == "a" {
        if let Some(link) = anchor.take() {
            out.links.push(link);
        }
        if let Some((_, href)) = tag.attributes.iter().find(|(a, _)| a == "href") {
            *anchor = Some(Link {
                href: decode_entities(href.trim()),
                text: String::new(),
            });
        }
    }
    if VOID.contains(&name) || tag.self_closing || stack.len() >= MAX_DEPTH {
        return tag.end;
    }
    let parent = stack.last().cloned().unwrap_or_default();
    let mut frame = Frame {
        name: tag.name.clone(),
        ..parent
    };
    for (attr, value) in &tag.attributes {
        match attr.as_str() {
            "style" => apply_style(value, &mut frame),
            "hidden" => frame.hidden = true,
            "color" | "text" => frame.color = parse_color(value).or(frame.color),
            "bgcolor" => frame.background = parse_color(value).or(frame.background),
            _ => {}
        }
    }
    stack.push(frame);
    tag.end
}

fn apply_style(style: &str, frame: &mut Frame) {
    for declaration in style.split(';') {
        let Some((property, value)) = declaration.split_once(':') else {
            continue;
        };
        let property = property.trim().to_ascii_lowercase();
        let value = value.trim().to_ascii_lowercase();
        let value = value.trim_end_matches("!important").trim();
        match property.as_str() {
            "display" if value == "none" => frame.hidden = true,
            "visibility" if value == "hidden" || value == "collapse" => frame.hidden = true,
            "font-size" if zero_size(value) => frame.hidden = true,
            "opacity" if value.parse::<f64>().is_ok_and(|v| v < 0.05) => frame.hidden = true,
            "color" => frame.color = parse_color(value).or(frame.color),
            "background-color" | "background" => {
                frame.background = value
                    .split_whitespace()
                    .find_map(parse_color)
                    .or(frame.background);
            }
            _ => {}
        }
    }
}

/// `0`, `0px`, `0.5pt`, `1px`: too small to read.
fn zero_size(value: &str) -> bool {
    let number: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let unit = &value[number.len()..];
    match number.parse::<f64>() {
        Ok(n) => match unit {
            "" | "px" | "pt" => n <= 1.0,
            "em" | "rem" => n <= 0.1,
            "%" => n <= 10.0,
            _ => n == 0.0,
        },
        Err(_) => false,
    }
}

/// `#rgb`, `#rrggbb`, `rgb(r,g,b)` or a few colour names, as 0xRRGGBB.
fn parse_color(value: &str) -> Option<u32> {
    let value = value.trim().trim_matches('"').to_ascii_lowercase();
    if let Some(hex) = value.strip_prefix('#') {
        return match hex.len() {
            3 => {
                let v = u32::from_str_radix(hex, 16).ok()?;
                let (r, g, b) = ((v >> 8) & 0xf, (v >> 4) & 0xf, v & 0xf);
                Some(((r * 0x11) << 16) | ((g * 0x11) << 8) | (b * 0x11))
            }
            6 => u32::from_str_radix(hex, 16).ok(),
            _ => None,
        };
    }
    if let Some(args) = value
        .strip_prefix("rgb(")
        .or_else(|| value.strip_prefix("rgba("))
    {
        let mut parts = args.trim_end_matches(')').split(',');
        let mut channel = || -> Option<u32> { parts.next()?.trim().parse::<u32>().ok() };
        let (r, g, b) = (channel()?, channel()?, channel()?);
        return Some((r.min(255) << 16) | (g.min(255) << 8) | b.min(255));
    }
    match value.as_str() {
        "white" => Some(0xffffff),
        "black" => Some(0x000000),
        "red" => Some(0xff0000),
        "blue" => Some(0x0000ff),
        "green" => Some(0x008000),
        "yellow" => Some(0xffff00),
        "gray" | "grey" => Some(0x808080),
        "silver" => Some(0xc0c0c0),
        _ => None,
    }
}

fn emit_text(raw: &str, stack: &[Frame], anchor: &mut Option<Link>, out: &mut Rendered) {
    if raw.is_empty() {
        return;
    }
    let hidden = stack.last().is_some_and(|frame| {
        frame.hidden || (frame.color.is_some() && frame.color == frame.background)
    });
    let text = decode_entities(raw);
    if hidden {
        out.invisible_chars += text.chars().filter(|c| !c.is_whitespace()).count();
        return;
    }
    if let Some(link) = anchor.as_mut() {
        push_collapsed(&mut link.text, &text);
    }
    push_collapsed(&mut out.text, &text);
}

/// Appends text with runs of whitespace made one space and invisible characters
/// (zero-width joiners, soft hyphens) dropped.
pub(super) fn push_collapsed(out: &mut String, text: &str) {
    // Copies runs of ordinary characters whole; only separators are looked at, and
    // only bytes outside ASCII are decoded.
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let (len, space, drop) = if bytes[i].is_ascii() {
            let space = bytes[i].is_ascii_whitespace() || bytes[i] == 0x0b;
            (1, space, space)
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            let space = c.is_whitespace();
            (c.len_utf8(), space, space || is_invisible_char(c))
        };
        if drop {
            out.push_str(&text[start..i]);
            start = i + len;
            if space && !out.is_empty() && !out.ends_with([' ', '\n']) {
                out.push(' ');
            }
        }
        i += len;
    }
    out.push_str(&text[start..]);
}

/// Characters that render as nothing and serve to break up words.
pub(super) fn is_invisible_char(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}' | '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}' | '\u{feff}'
    )
}

fn new_paragraph(text: &mut String) {
    while text.ends_with(' ') {
        text.pop();
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
}

/// Decodes character references (`&amp;`, `&#233;`, `&#x41;` and the common names).
pub(super) fn decode_entities(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '#')
            .map_or(rest.len(), |i| i + 1);
        let entity = &rest[1..end];
        let decoded = if let Some(number) = entity.strip_prefix('#') {
            let code = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => number.parse::<u32>().ok(),
            };
            code.map(|c| char::from_u32(c).unwrap_or('\u{fffd}'))
        } else {
            match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" | "ensp" | "emsp" | "thinsp" => Some(' '),
                "shy" | "zwnj" | "zwj" => Some('\u{200b}'),
                "copy" => Some('©'),
                "reg" => Some('®'),
                "euro" => Some('€'),
                "pound" => Some('£'),
                _ => None,
            }
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end..];
                rest = rest.strip_prefix(';').unwrap_or(rest);
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Finds an ASCII needle in a haystack without regard to case.
fn find_ascii_ci(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}
