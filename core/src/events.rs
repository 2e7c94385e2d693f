//! The webhook events Kiln emits, and which change emits which. Both are decisions, not
//! storage: the ledger asks `EventType::of_job_transition` or `EventType::of_pipeline_end` and
//! writes the delivery in the transition's own transaction; the api checks a client's event
//! filter against `EventType::JOB` or `EventType::PIPELINE`. Kept here, free of SQL, so the
//! rules are unit-tested once.

use crate::job::Status;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A webhook event's `type`, as a receiver reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum EventType {
    #[serde(rename = "job.started")]
    JobStarted,
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.canceled")]
    JobCanceled,
    #[serde(rename = "pipeline.succeeded")]
    PipelineSucceeded,
    #[serde(rename = "pipeline.failed")]
    PipelineFailed,
    #[serde(rename = "pipeline.canceled")]
    PipelineCanceled,
}

impl EventType {
    /// The events a job's webhook may ask for.
    pub const JOB: [EventType; 4] = [
        EventType::JobStarted,
        EventType::JobSucceeded,
        EventType::JobFailed,
        EventType::JobCanceled,
    ];
    /// The events a pipeline's webhook may ask for.
    pub const PIPELINE: [EventType; 3] = [
        EventType::PipelineSucceeded,
        EventType::PipelineFailed,
        EventType::PipelineCanceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::JobStarted => "job.started",
            EventType::JobSucceeded => "job.succeeded",
            EventType::JobFailed => "job.failed",
            EventType::JobCanceled => "job.canceled",
            EventType::PipelineSucceeded => "pipeline.succeeded",
            EventType::PipelineFailed => "pipeline.failed",
            EventType::PipelineCanceled => "pipeline.canceled",
        }
    }

    /// The event a job's move to `to` emits, if any. A job is started once per attempt but
    /// its webhook hears `job.started` only for the first start (`Self::first_start_only`);
    /// going back to `queued` (a retry, a rescue) is not an event.
    pub fn of_job_transition(to: Status) -> Option<EventType> {
        match to {
            Status::Queued => None,
            Status::Running => Some(EventType::JobStarted),
            Status::Succeeded => Some(EventType::JobSucceeded),
            Status::Failed => Some(EventType::JobFailed),
            Status::Canceled => Some(EventType::JobCanceled),
        }
    }

    /// The event a pipeline's end emits; `None` for a status a pipeline does not end in.
    pub fn of_pipeline_end(status: Status) -> Option<EventType> {
        match status {
            Status::Succeeded => Some(EventType::PipelineSucceeded),
            Status::Failed => Some(EventType::PipelineFailed),
            Status::Canceled => Some(EventType::PipelineCanceled),
            Status::Queued | Status::Running => None,
        }
    }

    /// Whether the event is written only for a job's first start (its first attempt), not for
    /// every start after a retry.
    pub fn first_start_only(self) -> bool {
        self == EventType::JobStarted
    }

    pub fn is_pipeline_event(self) -> bool {
        EventType::PIPELINE.contains(&self)
    }
}

/// A client's event filter (`webhook_events`): every name one of `allowed`, at least one
/// name. The error says what is allowed, for the client.
pub fn parse_event_filter<'a>(
    names: impl IntoIterator<Item = Option<&'a str>>,
    allowed: &[EventType],
) -> Result<Vec<EventType>, String> {
    let refused = || {
        let allowed: Vec<&str> = allowed.iter().map(|e| e.as_str()).collect();
        format!("webhook_events may hold only {}", allowed.join(", "))
    };
    let mut events = Vec::new();
    for name in names {
        let event = name
            .and_then(|n| n.parse::<EventType>().ok())
            .filter(|e| allowed.contains(e))
            .ok_or_else(refused)?;
        events.push(event);
    }
    if events.is_empty() {
        return Err("webhook_events must name at least one event (leave it out for all)".into());
    }
    Ok(events)
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::JOB
            .into_iter()
            .chain(EventType::PIPELINE)
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown event type '{s}'"))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_transition_but_a_requeue_is_an_event() {
        assert_eq!(EventType::of_job_transition(Status::Queued), None);
        for (to, event) in [
            (Status::Running, EventType::JobStarted),
            (Status::Succeeded, EventType::JobSucceeded),
            (Status::Failed, EventType::JobFailed),
            (Status::Canceled, EventType::JobCanceled),
        ] {
            assert_eq!(EventType::of_job_transition(to), Some(event));
        }
    }

    #[test]
    fn only_a_first_start_is_announced_once() {
        assert!(EventType::JobStarted.first_start_only());
        assert!(EventType::JOB[1..].iter().all(|e| !e.first_start_only()));
        assert!(EventType::PIPELINE.iter().all(|e| !e.first_start_only()));
    }

    #[test]
    fn a_pipeline_is_announced_only_when_it_ends() {
        assert_eq!(EventType::of_pipeline_end(Status::Running), None);
        assert_eq!(EventType::of_pipeline_end(Status::Queued), None);
        assert_eq!(
            EventType::of_pipeline_end(Status::Failed),
            Some(EventType::PipelineFailed)
        );
        assert!(EventType::PIPELINE.iter().all(|e| e.is_pipeline_event()));
        assert!(EventType::JOB.iter().all(|e| !e.is_pipeline_event()));
    }

    #[test]
    fn a_filter_takes_only_the_allowed_events_and_at_least_one() {
        assert_eq!(
            parse_event_filter([Some("job.failed")], &EventType::JOB),
            Ok(vec![EventType::JobFailed])
        );
        let refused = parse_event_filter([Some("pipeline.failed")], &EventType::JOB).unwrap_err();
        assert!(refused.contains("job.started, job.succeeded"), "{refused}");
        assert!(parse_event_filter([None], &EventType::PIPELINE).is_err());
        assert!(parse_event_filter([], &EventType::PIPELINE).is_err());
    }

    #[test]
    fn names_round_trip_through_text_and_json() {
        for event in EventType::JOB.into_iter().chain(EventType::PIPELINE) {
            assert_eq!(event.as_str().parse::<EventType>(), Ok(event));
            let json = serde_json::to_value(event).unwrap();
            assert_eq!(json, event.as_str());
        }
        assert!("job.queued".parse::<EventType>().is_err());
    }
}
