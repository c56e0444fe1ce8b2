//! Waiting for the first of two futures (the crate does not enable tokio's `macros`).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

/// Which future of [`first`] finished, with its output.
#[derive(Debug)]
pub(super) enum First<A, B> {
    /// The first one.
    Left(A),
    /// The second one.
    Right(B),
}

/// Waits for whichever of `a` and `b` finishes first, polling `a` first; drops the other.
pub(super) async fn first<A: Future, B: Future>(a: A, b: B) -> First<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(output) = a.as_mut().poll(cx) {
            return Poll::Ready(First::Left(output));
        }
        b.as_mut().poll(cx).map(First::Right)
    })
    .await
}
