//! Domains as they are compared: recipients against our domains, senders against
//! the policy's lists, next hops against the routes.

/// A domain in the form domains are compared in: IDNA ASCII, lower case, without a
/// trailing dot; `None` when it is not a valid domain name.
pub fn ascii_domain(domain: &str) -> Option<String> {
    idna::domain_to_ascii(domain.trim_end_matches('.')).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_compare_as_lower_case_ascii_without_the_root_dot() {
        assert_eq!(ascii_domain("Example.COM.").as_deref(), Some("example.com"));
        assert_eq!(
            ascii_domain("Bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
    }
}
