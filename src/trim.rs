//! Gives memory freed by a wave of connections back to the kernel.
//!
//! glibc malloc keeps what is freed in the middle of its heaps (each runtime thread has an
//! arena of its own) and only trims their tops: after a flood of 10,000 half-open or pre-auth
//! connections has gone, mailgate's RSS would stay at the flood's peak. `malloc_trim(0)` hands
//! every free page back (`MADV_DONTNEED`), so RSS returns to what the remaining sessions use.
//! It walks the arenas under their locks, so it runs on the blocking pool, and only after a
//! wave: when the live connection count has fallen to half of its peak since the last trim.

use std::time::Duration;

/// How often the live count is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A peak below this is not a wave worth a trim (a few MiB at most).
const MIN_WAVE: usize = 256;

/// Runs until dropped. `live` is the number of connections open now.
pub async fn run(live: impl Fn() -> usize) {
    let mut peak = 0;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let now = live();
        peak = peak.max(now);
        if peak >= MIN_WAVE && now <= peak / 2 {
            let _ = tokio::task::spawn_blocking(trim).await;
            tracing::debug!(peak, now, "returned freed memory to the kernel");
            peak = now;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl, macOS) return memory by themselves or have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
