//! Where a namespace's budgets live in Redis.
//!
//! Every key of namespace `ns` starts with `rl:v1:{ns}:` (`v1`: the state's format, so a
//! later format can live beside it). The braces are a Redis Cluster hash tag: all of a
//! namespace's keys hash to one slot, and one ACL key pattern, `~rl:v1:{ns}:*`, confines a
//! user to the namespace. After the prefix comes what the key holds: `tb` a token bucket's
//! state and book, `sw` a sliding window's and `swl` its log; with `scope="global"` that is all
//! (`rl:v1:{ns}:tb`), with `scope="key"` a `:` and the key's bytes as they are follow
//! (`rl:v1:{ns}:tb:user_1`; a Redis key is binary-safe, and the prefix alone decides the slot
//! and the pattern).
//! A namespace is 1 to 64 letters, digits and `_ . -`: nothing a glob pattern or a hash tag
//! would read as syntax.

use ratelimit_core::{Error, Result, Scope};

pub const MAX_NAMESPACE_LEN: usize = 64;

#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
    scope: Scope,
}

impl Layout {
    pub fn new(namespace: &str, scope: Scope) -> Result<Self> {
        let valid = (1..=MAX_NAMESPACE_LEN).contains(&namespace.len())
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(Error::InvalidArgument {
                argument: "namespace",
                message: format!(
                    "must be 1 to {MAX_NAMESPACE_LEN} letters, digits, '_', '.' or '-', got \
                     {namespace:?}"
                ),
            });
        }
        Ok(Self {
            prefix: format!("rl:v1:{{{namespace}}}:"),
            scope,
        })
    }

    /// The key pattern that covers the namespace (for an ACL user's `~pattern`).
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// The Redis key holding `part` (`tb`, `sw` or `swl`) of the budget `key` draws on.
    pub fn name(&self, part: &str, key: &str) -> Vec<u8> {
        let mut name = self.prefix.clone().into_bytes();
        name.extend_from_slice(part.as_bytes());
        if self.scope == Scope::Key {
            name.push(b':');
            name.extend_from_slice(key.as_bytes());
        }
        name
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_namespace_tag() {
        let global = Layout::new("a", Scope::Global).unwrap();
        assert_eq!(global.name("tb", "user_1"), b"rl:v1:{a}:tb");
        assert_eq!(global.pattern(), "rl:v1:{a}:*");
        let keyed = Layout::new("a", Scope::Key).unwrap();
        assert_eq!(keyed.name("sw", "u}*:1"), b"rl:v1:{a}:sw:u}*:1");
    }

    #[test]
    fn a_namespace_is_plain_text() {
        for bad in ["", "a}b", "a*", "a:b", "a b", &"x".repeat(65)] {
            let error = Layout::new(bad, Scope::Global).unwrap_err();
            assert_eq!(error.argument(), "namespace", "{bad:?}");
        }
    }
}
