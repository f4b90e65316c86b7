//! Where a namespace's budgets live in Redis.
//!
//! Every key of namespace `ns` starts with `rl:v2:{ns}:` (`v2`: the state's format, so
//! that processes of a release that wrote another one never read it: `v1`'s book was text,
//! `v2`'s is MessagePack). The braces are a Redis Cluster hash tag: all of a
//! namespace's keys hash to one slot, and one ACL key pattern, `~rl:v2:{ns}:*`, confines a
//! user to the namespace. After the prefix comes what the key holds: `tb` a token bucket's
//! state and book, `sw` a sliding window's and `swl` its log; with `scope="global"` that is all
//! (`rl:v2:{ns}:tb`), with `scope="key"` a `:` and the key's bytes as they are follow
//! (`rl:v2:{ns}:tb:user_1`; a Redis key is binary-safe, and the prefix alone decides the slot
//! and the pattern).
//! A namespace is 1 to 64 letters, digits and `_ . -`: nothing a glob pattern or a hash tag
//! would read as syntax.
//!
//! A reservation's id names its booking in the budget's book and the budget: `7:ns` with
//! `scope="global"`, `7:ns@user_1` with `scope="key"`. A limiter refuses an id of another
//! namespace as unknown, and with `scope="global"` nothing follows the namespace.

use ratelimit_core::{Error, Result, Scope};

pub const MAX_NAMESPACE_LEN: usize = 64;

#[derive(Debug, Clone)]
pub struct Layout {
    namespace: String,
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
            namespace: namespace.to_owned(),
            prefix: format!("rl:v2:{{{namespace}}}:"),
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

    /// The id of booking `number` in the budget `key` draws on.
    pub fn reservation_id(&self, number: u64, key: &str) -> String {
        match self.scope {
            Scope::Global => format!("{number}:{}", self.namespace),
            Scope::Key => format!("{number}:{}@{key}", self.namespace),
        }
    }

    /// The booking number and the key of a [`Layout::reservation_id`] of this namespace;
    /// `None` for any other text.
    pub fn parse_reservation_id<'a>(&self, id: &'a str) -> Option<(u64, &'a str)> {
        let (head, key) = match self.scope {
            Scope::Global => (id, ""),
            Scope::Key => id.split_once('@')?,
        };
        let (number, namespace) = head.split_once(':')?;
        if namespace != self.namespace || number.starts_with('+') {
            return None;
        }
        Some((number.parse().ok()?, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_namespace_tag() {
        let global = Layout::new("a", Scope::Global).unwrap();
        assert_eq!(global.name("tb", "user_1"), b"rl:v2:{a}:tb");
        assert_eq!(global.pattern(), "rl:v2:{a}:*");
        let keyed = Layout::new("a", Scope::Key).unwrap();
        assert_eq!(keyed.name("sw", "u}*:1"), b"rl:v2:{a}:sw:u}*:1");
    }

    #[test]
    fn a_reservation_id_names_its_namespace() {
        let global = Layout::new("a", Scope::Global).unwrap();
        assert_eq!(global.reservation_id(7, "user_1"), "7:a");
        assert_eq!(global.parse_reservation_id("7:a"), Some((7, "")));
        let keyed = Layout::new("a", Scope::Key).unwrap();
        assert_eq!(keyed.reservation_id(7, "u@1"), "7:a@u@1");
        assert_eq!(keyed.parse_reservation_id("7:a@u@1"), Some((7, "u@1")));
        for foreign in ["7:b", "7:a0", "7", "x:a", "+7:a", "", "7:a@k"] {
            assert_eq!(global.parse_reservation_id(foreign), None, "{foreign:?}");
        }
        assert_eq!(keyed.parse_reservation_id("7:b@k"), None);
    }

    #[test]
    fn a_namespace_is_plain_text() {
        for bad in ["", "a}b", "a*", "a:b", "a b", &"x".repeat(65)] {
            let error = Layout::new(bad, Scope::Global).unwrap_err();
            assert_eq!(error.argument(), "namespace", "{bad:?}");
        }
    }
}
