//! Route lookup: host (exact, then the longest `*.suffix` wildcard, then any
//! host), then the longest path prefix in that host's byte trie.
//!
//! Cost per request: one hash lookup for the exact host, one per label for
//! wildcards, and one trie walk over the path (O(path length)), whatever the
//! number of routes. A host group with no matching prefix falls through to
//! the next less specific group, so a catch-all listener `upstream` still
//! serves paths a host's routes do not cover.

use std::collections::HashMap;

/// A byte trie of path prefixes mapping to route indices.
#[derive(Debug)]
struct Trie {
    /// Node 0 is the root. Children are few per node: a sorted small vec.
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    children: Vec<(u8, u32)>,
    route: Option<u32>,
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::default()],
        }
    }
}

impl Trie {
    /// Insert; returns false when the prefix was already taken.
    fn insert(&mut self, prefix: &[u8], route: u32) -> bool {
        let mut at = 0usize;
        for &b in prefix {
            at = match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[at].children.insert(i, (b, id as u32));
                    id
                }
            };
        }
        if self.nodes[at].route.is_some() {
            return false;
        }
        self.nodes[at].route = Some(route);
        true
    }

    /// The route of the longest prefix of `path`.
    fn longest(&self, path: &[u8]) -> Option<u32> {
        let mut at = 0usize;
        let mut best = self.nodes[0].route;
        for &b in path {
            let node = &self.nodes[at];
            let next = if node.children.len() <= 8 {
                node.children.iter().find(|c| c.0 == b).map(|c| c.1)
            } else {
                node.children
                    .binary_search_by_key(&b, |c| c.0)
                    .ok()
                    .map(|i| node.children[i].1)
            };
            match next {
                Some(n) => at = n as usize,
                None => break,
            }
            if let Some(r) = self.nodes[at].route {
                best = Some(r);
            }
        }
        best
    }
}

/// All routes of a listener.
#[derive(Debug)]
pub struct Router {
    exact: HashMap<String, Trie, ahash::RandomState>,
    /// Keyed by the suffix after "*." ("example.com" for "*.example.com").
    wildcard: HashMap<String, Trie, ahash::RandomState>,
    any: Option<Trie>,
}

/// Two routes claim the same host and prefix.
#[derive(Debug)]
pub struct Duplicate(pub usize);

impl Router {
    /// Build from `(host, prefix)` per route, in route order. A later route
    /// with the same host and prefix as an earlier one is an error.
    pub fn new<'a>(
        routes: impl Iterator<Item = (Option<&'a str>, &'a str)>,
    ) -> Result<Router, Duplicate> {
        let mut r = Router {
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            any: None,
        };
        for (i, (host, prefix)) in routes.enumerate() {
            let trie = match host {
                None => r.any.get_or_insert_with(Trie::default),
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) => r.wildcard.entry(suffix.to_string()).or_default(),
                    None => r.exact.entry(h.to_string()).or_default(),
                },
            };
            if !trie.insert(prefix.as_bytes(), i as u32) {
                return Err(Duplicate(i));
            }
        }
        Ok(r)
    }

    /// The route for `host` (lower case, no port) and `path`.
    pub fn find(&self, host: &str, path: &[u8]) -> Option<usize> {
        if let Some(r) = self.exact.get(host).and_then(|t| t.longest(path)) {
            return Some(r as usize);
        }
        if !self.wildcard.is_empty() {
            // "a.b.example.com" tries "b.example.com", then "example.com", then "com".
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(r) = self.wildcard.get(rest).and_then(|t| t.longest(path)) {
                    return Some(r as usize);
                }
            }
        }
        self.any
            .as_ref()
            .and_then(|t| t.longest(path))
            .map(|r| r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(Option<&str>, &str)]) -> Router {
        Router::new(routes.iter().copied()).unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router(&[
            (None, "/"),
            (None, "/api/"),
            (None, "/api/v2/"),
            (None, "/static"),
        ]);
        assert_eq!(r.find("x", b"/"), Some(0));
        assert_eq!(r.find("x", b"/index.html"), Some(0));
        assert_eq!(r.find("x", b"/api/"), Some(1));
        assert_eq!(r.find("x", b"/api/v1/users"), Some(1));
        assert_eq!(r.find("x", b"/api/v2/users?q=1"), Some(2));
        assert_eq!(r.find("x", b"/api"), Some(0));
        assert_eq!(r.find("x", b"/staticfiles/a"), Some(3));
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let r = router(&[
            (Some("api.example.com"), "/"),
            (Some("*.example.com"), "/"),
            (Some("*.b.example.com"), "/v1/"),
            (None, "/"),
        ]);
        assert_eq!(r.find("api.example.com", b"/x"), Some(0));
        assert_eq!(r.find("www.example.com", b"/x"), Some(1));
        assert_eq!(r.find("a.b.example.com", b"/v1/x"), Some(2));
        // The more specific wildcard has no match for /v2: fall to the next.
        assert_eq!(r.find("a.b.example.com", b"/v2/x"), Some(1));
        assert_eq!(r.find("example.com", b"/x"), Some(3));
        assert_eq!(r.find("other.org", b"/x"), Some(3));
    }

    #[test]
    fn no_match_is_none() {
        let r = router(&[(Some("a.com"), "/api/")]);
        assert_eq!(r.find("a.com", b"/other"), None);
        assert_eq!(r.find("b.com", b"/api/"), None);
    }

    #[test]
    fn duplicate_is_refused() {
        let e = Router::new([(None, "/a"), (Some("x"), "/a"), (None, "/a")].into_iter());
        assert!(matches!(e, Err(Duplicate(2))));
    }

    #[test]
    fn many_children_use_binary_search() {
        let prefixes: Vec<String> = (0u8..40)
            .map(|i| format!("/{}", char::from(b'0' + i)))
            .collect();
        let r = Router::new(prefixes.iter().map(|p| (None, p.as_str()))).unwrap();
        for (i, p) in prefixes.iter().enumerate() {
            assert_eq!(r.find("h", format!("{p}/x").as_bytes()), Some(i));
        }
    }
}
