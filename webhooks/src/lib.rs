//! `kiln-webhooks` owns Kiln's outbound HTTP to addresses that users choose: webhook deliveries
//! and input downloads. Both go through one SSRF-safe client (invariant 6), defined in `ssrf`, so
//! there is exactly one place that decides which addresses Kiln may reach on a user's behalf.
//! Standard Webhooks signing and durable delivery build on this client.

pub mod seal;
pub mod sign;
pub mod ssrf;

pub use seal::SecretSeal;
pub use sign::{signature_header, WebhookSecret};
pub use ssrf::{FetchError, PostAnswer, SafeClient, SsrfPolicy};
