//! The Public Suffix List, for DMARC's organizational domain (RFC 7489 §3.2): the
//! copy built into the binary (the `psl` crate, whose version dates it), or the file
//! `[dns] public_suffix_list` names, in the list's own format, for a site that keeps
//! it current.

use std::path::Path;

use publicsuffix::Psl as _;

/// Which list names the public suffixes.
#[derive(Debug)]
pub enum Suffixes {
    BuiltIn,
    File(publicsuffix::List),
}

impl Suffixes {
    /// The list in `path`; an error naming the file when it cannot be read or holds
    /// no rule.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let list = publicsuffix::List::from_bytes(&bytes)
            .map_err(|e| format!("{}: not a public suffix list: {e}", path.display()))?;
        if list.is_empty() {
            return Err(format!("{}: the list holds no rule", path.display()));
        }
        Ok(Suffixes::File(list))
    }

    /// The organizational domain of `domain`: its public suffix and one label more,
    /// or the domain itself when it is a public suffix or has none (RFC 7489 §3.2).
    /// Lowercase, without a final dot.
    pub fn organizational(&self, domain: &str) -> String {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let found = match self {
            Suffixes::BuiltIn => psl::domain(domain.as_bytes()).map(|d| d.as_bytes().to_vec()),
            Suffixes::File(list) => list
                .domain(domain.as_bytes())
                .map(|d| d.as_bytes().to_vec()),
        };
        found
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or(domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_list_knows_multi_label_suffixes() {
        let list = Suffixes::BuiltIn;
        assert_eq!(list.organizational("News.Example.COM."), "example.com");
        assert_eq!(list.organizational("mail.shop.co.uk"), "shop.co.uk");
        assert_eq!(list.organizational("co.uk"), "co.uk");
        assert_eq!(
            list.organizational("a.b.example.github.io"),
            "example.github.io"
        );
    }

    #[test]
    fn a_file_replaces_the_built_in_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suffixes.dat");
        std::fs::write(
            &path,
            "// ===BEGIN ICANN DOMAINS===\ncom\nexample.com\n// ===END ICANN DOMAINS===\n",
        )
        .unwrap();
        let list = Suffixes::from_file(&path).unwrap();
        assert_eq!(list.organizational("news.example.com"), "news.example.com");
        assert_eq!(list.organizational("example.com"), "example.com");
        assert_eq!(list.organizational("other.com"), "other.com");
        let missing = Suffixes::from_file(&dir.path().join("none.dat")).unwrap_err();
        assert!(missing.contains("none.dat"), "{missing}");
        std::fs::write(&path, "// nothing but a comment\n").unwrap();
        assert!(Suffixes::from_file(&path).is_err());
    }
}
