//! The domain: events, the pure fold of job and session state, and the pure
//! decisions of what a command appends. Nothing here does I/O or reads a clock.

pub mod chain;
pub mod close;
pub mod deadline;
pub mod decide;
pub mod event;
pub mod history;
pub mod notify;
pub mod plan;
pub mod reaction;
pub mod state;
pub mod stream;
pub mod summary;

pub use decide::{decide, Command, Decision, DomainError};
pub use event::{Event, EventBody, JobId, SessionId};
pub use plan::{plan, Plan, Policy, Reply};
pub use state::{JobState, JobStatus, SessionPhase, SessionState, World};
