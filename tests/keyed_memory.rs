//! Does a keyed provider's cache stay bounded? 10,000 distinct keys through a cache of 256:
//! the memory the process holds stops growing once the cache is full, and no caller ever
//! gets a token of another key. Memory is counted by a global allocator of this test binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use token_refresh::{AccessToken, KeyedTokenProvider, TokenParams, TokenSource};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A source whose token names the scope it was asked for.
#[derive(Debug)]
struct ByScope;

#[token_refresh::async_trait]
impl TokenSource for ByScope {
    async fn fetch_token(&self) -> token_refresh::Result<AccessToken> {
        AccessToken::new("default", Duration::from_secs(3600))
    }
    async fn fetch_token_for(&self, params: &TokenParams) -> token_refresh::Result<AccessToken> {
        let scope = params.scope_string().unwrap_or_default();
        AccessToken::new(format!("token-for-{scope}"), Duration::from_secs(3600))
    }
}

#[test]
fn ten_thousand_keys_through_a_bounded_cache_hold_bounded_memory_and_never_a_wrong_token() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        const MAX: usize = 256;
        let keyed = KeyedTokenProvider::builder(ByScope).max_keys(MAX).build();
        let mut live_when_full = 0;
        let mut peak_after = 0;
        for n in 0..10_000 {
            let params = TokenParams::scope(format!("scope-{n}"));
            let token = keyed.token_for(&params).await.unwrap();
            assert_eq!(token.expose_secret(), format!("token-for-scope-{n}"));
            assert!(keyed.keys() <= MAX);
            if n == 2 * MAX {
                live_when_full = LIVE.load(Ordering::Relaxed);
            }
            if n > 2 * MAX {
                peak_after = peak_after.max(LIVE.load(Ordering::Relaxed));
            }
        }
        // The most recent keys are still cached and give their own token, not another's.
        for n in (10_000 - MAX)..10_000 {
            let params = TokenParams::scope(format!("scope-{n}"));
            let token = keyed.token_for(&params).await.unwrap();
            assert_eq!(token.expose_secret(), format!("token-for-scope-{n}"));
        }
        let per_key = live_when_full / MAX as isize;
        println!(
            "keyed cache of {MAX}: {live_when_full} bytes live when full (about {per_key} per key); \
             at most {peak_after} bytes over the next {} distinct keys",
            10_000 - 2 * MAX
        );
        assert!(
            peak_after < live_when_full + live_when_full / 4,
            "memory grew past the cache's bound: {live_when_full} then {peak_after}"
        );
    });
}
