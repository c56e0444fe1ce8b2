//! [`TokenParams`]: what a token request varies per destination — scopes, audience, RFC 8707
//! resources — and the key a keyed provider caches a token under.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The parameters a token request varies per destination: its scopes (RFC 6749 §3.3), its
/// audience, and its resources (RFC 8707 resource indicators). One credential asks for a
/// different token for each distinct value: a [keyed provider](crate::KeyedTokenProvider)
/// caches one per value, and both integrations pick one per route.
///
/// Values are normalised, so that equal requests are equal keys: scopes are split on
/// spaces, sorted and deduplicated (`"write read"` is `"read write"`), resources sorted and
/// deduplicated. Cheap to clone and to compare; the hash is computed once.
///
/// A grant sends what a `TokenParams` names in place of its own setting of the same kind:
/// scopes replace the grant's scopes, an audience its audience, resources its resources;
/// what the value leaves empty keeps the grant's.
///
/// ```
/// use token_refresh::TokenParams;
///
/// let read = TokenParams::scope("read");
/// let same = TokenParams::scope("read read");
/// assert_eq!(read, same);
/// let both = TokenParams::scope("write read").with_resource("https://api.example.com");
/// assert_eq!(both.scopes(), ["read", "write"]);
/// assert_eq!(both.resources(), ["https://api.example.com"]);
/// assert_eq!(read.union(&TokenParams::scope("admin")).scopes(), ["admin", "read"]);
/// ```
#[derive(Clone, Default)]
pub struct TokenParams {
    inner: Arc<Inner>,
}

#[derive(Default, PartialEq, Eq)]
struct Inner {
    scopes: Vec<String>,
    audience: Option<String>,
    resources: Vec<String>,
    hash: u64,
}

impl TokenParams {
    /// No parameters: the grant's own scopes, audience and resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// `scope`: one scope, or several separated by spaces.
    pub fn scope(scope: impl AsRef<str>) -> Self {
        Self::new().with_scope(scope)
    }

    /// The audience `audience` (the `audience` parameter, or an assertion's `aud`).
    pub fn audience(audience: impl Into<String>) -> Self {
        Self::new().with_audience(audience)
    }

    /// The resource `resource` (RFC 8707: an absolute URI without a fragment).
    pub fn resource(resource: impl Into<String>) -> Self {
        Self::new().with_resource(resource)
    }

    /// Adds scopes (one, or several separated by spaces).
    pub fn with_scope(self, scope: impl AsRef<str>) -> Self {
        self.change(|inner| {
            inner
                .scopes
                .extend(scope.as_ref().split_whitespace().map(str::to_owned));
        })
    }

    /// Sets the audience.
    pub fn with_audience(self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        self.change(|inner| inner.audience = Some(audience))
    }

    /// Adds a resource (RFC 8707; several are allowed).
    pub fn with_resource(self, resource: impl Into<String>) -> Self {
        let resource = resource.into();
        self.change(|inner| inner.resources.push(resource))
    }

    /// The scopes, sorted.
    pub fn scopes(&self) -> &[String] {
        &self.inner.scopes
    }

    /// The scopes as a request sends them: space-separated, `None` if there are none.
    pub fn scope_string(&self) -> Option<String> {
        (!self.inner.scopes.is_empty()).then(|| self.inner.scopes.join(" "))
    }

    /// The audience, if set.
    pub fn audience_value(&self) -> Option<&str> {
        self.inner.audience.as_deref()
    }

    /// The resources, sorted.
    pub fn resources(&self) -> &[String] {
        &self.inner.resources
    }

    /// Whether nothing is set: the grant's own request.
    pub fn is_empty(&self) -> bool {
        self.inner.scopes.is_empty()
            && self.inner.audience.is_none()
            && self.inner.resources.is_empty()
    }

    /// These parameters with `other`'s scopes and resources added (and `other`'s audience
    /// where these have none): what a step-up asks for after `insufficient_scope`.
    pub fn union(&self, other: &TokenParams) -> TokenParams {
        let other = &other.inner;
        self.clone().change(|inner| {
            inner.scopes.extend(other.scopes.iter().cloned());
            inner.resources.extend(other.resources.iter().cloned());
            if inner.audience.is_none() {
                inner.audience.clone_from(&other.audience);
            }
        })
    }

    /// Whether every scope of `other` is among these.
    pub fn covers_scopes_of(&self, other: &TokenParams) -> bool {
        other
            .inner
            .scopes
            .iter()
            .all(|s| self.inner.scopes.binary_search(s).is_ok())
    }

    fn change(self, edit: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            scopes: self.inner.scopes.clone(),
            audience: self.inner.audience.clone(),
            resources: self.inner.resources.clone(),
            hash: 0,
        };
        edit(&mut inner);
        inner.scopes.sort_unstable();
        inner.scopes.dedup();
        inner.resources.sort_unstable();
        inner.resources.dedup();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&inner.scopes, &inner.audience, &inner.resources).hash(&mut hasher);
        inner.hash = hasher.finish();
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl PartialEq for TokenParams {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.inner == other.inner
    }
}

impl Eq for TokenParams {}

impl Hash for TokenParams {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.inner.hash);
    }
}

impl fmt::Debug for TokenParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("TokenParams");
        if !self.inner.scopes.is_empty() {
            s.field("scopes", &self.inner.scopes);
        }
        if let Some(audience) = &self.inner.audience {
            s.field("audience", audience);
        }
        if !self.inner.resources.is_empty() {
            s.field("resources", &self.inner.resources);
        }
        s.finish()
    }
}
