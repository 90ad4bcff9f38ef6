//! Upkeep of the daemon's allocator. mimalloc (the binary's global allocator, see
//! `main.rs`) gives memory freed after a burst of work back to the system only when
//! its arenas are touched again, which a daemon serving small calls may not do for
//! hours: after an attack of slow request bodies the daemon kept ~30 MiB it no longer
//! used. Once a second the daemon asks mimalloc to collect, so its resident memory
//! comes back after a burst.

use std::time::Duration;

use crate::limits;

// The daemon links mimalloc; this makes every binary of the crate link it too.
extern crate mimalloc as _;

unsafe extern "C" {
    /// mimalloc's `mi_collect`: frees the pages the calling thread's heap holds
    /// unused, and purges arena memory freed longer ago than its `purge_delay`.
    fn mi_collect(force: bool);
}

/// Hands back what the calling thread's heap freed, now: called by the thread that
/// ran a large one-off job (recovery), whose pages `collect_freed_memory_forever`,
/// running on another thread, does not reach.
pub fn collect_this_thread() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread.
    unsafe { mi_collect(true) };
}

/// Collects every [`limits::ALLOCATOR_COLLECT_INTERVAL_MS`], forever.
pub async fn collect_freed_memory_forever() {
    let mut tick =
        tokio::time::interval(Duration::from_millis(limits::ALLOCATOR_COLLECT_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: `mi_collect` takes no pointers and may be called from any thread.
        unsafe { mi_collect(false) };
    }
}
