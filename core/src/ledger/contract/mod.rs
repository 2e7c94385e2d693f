//! The ledger contract: behaviour every `Ledger` implementation must show, written once against
//! the trait and run against each engine (SQLite here; Postgres runs the same functions). Each
//! function takes a fresh, empty ledger. The functions live beside the aggregate they exercise
//! (`jobs`, `attempts`, `batches`, `pipelines`, `deliveries`, `keys`, `maintenance`); this file holds the
//! shared helpers and the macro that turns every function into a test.

use super::*;
use crate::dispatch::Lane;
use crate::job::{AttemptOutcome, ErrorInfo, JobId, NewOutput, Status, TenantId};
use crate::time::now;
use std::sync::Arc;
use std::time::Duration;

mod attempts;
mod batches;
mod deliveries;
mod files;
mod jobs;
mod keys;
mod maintenance;
mod pipelines;

pub use attempts::*;
pub use batches::*;
pub use deliveries::*;
pub use files::*;
pub use jobs::*;
pub use keys::*;
pub use maintenance::*;
pub use pipelines::*;

const LEASE: Duration = Duration::from_secs(30);

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

/// A plain `demo/image` job of `owner`'s, to insert as it is or with fields changed.
pub(crate) fn job_of(owner: &str) -> NewJob {
    NewJob {
        idempotency: None,
        priority: Default::default(),
        surface: Default::default(),
        max_active: None,
        spend: None,
        id: JobId::new(),
        tenant: tenant(owner),
        model: "demo/image".into(),
        input: serde_json::json!({"prompt": "x"}),
        deadline_at: None,
        start_by: None,
        key_id: None,
        webhook_url: None,
        webhook_events: None,
    }
}

async fn new_job(ledger: &dyn Ledger, owner: &str) -> JobId {
    let job = ledger.insert_job(job_of(owner)).await.unwrap();
    assert_eq!(job.status, Status::Queued);
    job.id
}

/// Waits until a lease taken for `lease` has certainly expired on the ledger's clock.
async fn outlive(lease: Duration) {
    tokio::time::sleep(lease + Duration::from_millis(20)).await;
}

async fn terminal_transitions(ledger: &dyn Ledger, id: JobId) -> usize {
    ledger
        .transitions(id)
        .await
        .unwrap()
        .iter()
        .filter(|t| t.to.is_terminal())
        .count()
}

/// Runs every contract function, each on a fresh ledger from `fresh`.
#[macro_export]
macro_rules! ledger_contract_tests {
    ($fresh:expr) => {
        $crate::ledger_contract_tests!(@each $fresh;
            claims_are_exclusive,
            results_are_fenced_by_the_lease,
            cancel_fences_the_running_worker,
            terminal_states_never_change,
            the_rescue_limit_fails_a_job,
            retries_wait_until_due_and_releases_are_free,
            a_jobs_history_is_whole_though_its_plain_steps_are_implied,
            reads_are_scoped_by_tenant,
            due_jobs_are_rung_again_only_when_stale,
            expired_outputs_are_listed_until_marked,
            api_keys_are_looked_up_by_hash,
            worker_slots_are_unique_and_come_back,
            upstream_handles_and_callbacks_outlive_a_rescue,
            overdue_jobs_fail_with_the_limit_they_broke,
            webhook_events_are_written_with_their_transitions,
            pipelines_start_steps_as_their_inputs_exist_and_end_with_them,
            queued_jobs_know_their_place_and_running_ones_their_progress,
            a_place_deeper_than_the_cap_reads_as_the_cap,
            pipelines_are_listed_newest_first_within_their_tenant,
            idempotency_keys_replay_refuse_take_over_and_expire,
            tenant_windows_hold_a_burst_and_admit_it_as_places_free,
            a_job_back_in_the_window_does_not_widen_it,
            concurrent_writes_each_get_their_own_answer,
            concurrent_renewals_each_learn_their_own_lease,
            several_jobs_are_read_at_once,
            inline_data_is_kept_apart_from_the_job_row,
            a_queued_job_that_ends_leaves_its_lost_upstream_call_to_be_stopped,
            concurrent_submits_cannot_both_pass_the_spend_cap,
            usage_rows_come_a_page_of_jobs_at_a_time,
            a_batch_claims_each_claimable_job_once,
            claims_made_at_once_take_each_claimable_job_once,
            a_batch_of_successes_refuses_only_its_stale_leases,
            successes_made_at_once_refuse_only_their_stale_leases,
            a_batch_of_delivery_results_refuses_only_its_stale_claims,
            a_burst_of_submits_fills_each_window_exactly,
            a_job_keeps_the_surface_it_was_created_through,
            files_are_scoped_listed_deleted_and_expire,
            a_tenants_queue_counts_only_its_own_active_jobs_per_lane
        );
    };
    (@each $fresh:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                let (ledger, _guard) = $fresh.await;
                $crate::ledger::contract::$name(ledger).await;
            }
        )*
    };
}
