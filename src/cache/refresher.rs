//! The refresher: every `cache.refresh_interval`, one walk of the store prunes what no
//! longer says anything, sets the gauges, and finds the policies due for a refresh
//! (before they expire, RFC 8461 §3.3), which are then refreshed a few at a time;
//! afterwards the store is flushed and its checkpoint recorded.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::durability::Walk;
use super::lifecycle::Trigger;
use super::policy_cache::PolicyService;
use super::survey::{release_freed_memory, survey};

/// Runs the refresher until `stop` is cancelled.
pub async fn run(service: Arc<PolicyService>, stop: CancellationToken) {
    loop {
        let interval = service.settings().cache.refresh_interval;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let n = pass(&service, &stop).await;
        if n > 0 {
            tracing::info!(refreshed = n, "policies refreshed");
        }
        let this = service.clone();
        let recorded =
            tokio::task::spawn_blocking(move || this.durability().checkpoint_after_walk());
        if let Err(e) = recorded.await {
            tracing::error!(error = %e, "cache checkpoint task failed");
        }
    }
}

/// One pass: prune dead entries and refresh due policies, at most
/// `refresh_concurrency` at a time, until done or `stop` is cancelled. Returns how
/// many refreshes were started.
pub async fn pass(service: &Arc<PolicyService>, stop: &CancellationToken) -> usize {
    let settings = service.settings();
    let rules = settings.rules;
    let now = service.now();
    // One walk of the store finds the dead and the due, and counts for the gauges.
    // Walking and pruning read and delete in the store: on a blocking thread, so that
    // lookups on the runtime's workers never wait behind them.
    let this = service.clone();
    let walked = tokio::task::spawn_blocking(move || {
        // Removals counted from before the walk: the checkpoint this walk allows is
        // recorded only if no removal but its own pruning happened meanwhile.
        let removals = this.durability().removals();
        let survey = survey(this.store(), now, &rules, false);
        this.census().apply(&survey, this.metrics());
        release_freed_memory();
        let (mut pruned, mut pruned_policies) = (0, 0);
        for (domain, had_policy) in &survey.dead {
            if this.prune_if_dead(domain, now) {
                pruned += 1;
                pruned_policies += u64::from(*had_policy);
            }
        }
        if survey.incomplete.is_none() {
            this.durability().note_walk(Walk {
                policies: survey.policies.saturating_sub(pruned_policies),
                removals: removals + pruned_policies,
            });
        }
        (survey.due, pruned)
    })
    .await;
    let (due, pruned) = walked.unwrap_or_else(|e| {
        tracing::error!(error = %e, "cache walk task failed");
        (Vec::new(), 0)
    });
    if pruned > 0 {
        tracing::debug!(pruned, "expired cache entries pruned");
    }
    let limit = Arc::new(Semaphore::new(settings.cache.refresh_concurrency.get()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0;
    for domain in &due {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = stop.cancelled() => break,
        };
        let flight = service.discovery(domain, Trigger::Refresh, true);
        started += 1;
        tasks.spawn(async move {
            flight.await;
            drop(permit);
        });
    }
    tokio::select! {
        () = async { while tasks.join_next().await.is_some() {} } => {}
        () = stop.cancelled() => {}
    }
    started
}
