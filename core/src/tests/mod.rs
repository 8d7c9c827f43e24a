//! Whole-session property tests on the in-memory [`sim`](crate::sim) and transcripts of
//! each state machine fed by hand.

mod consent;
mod delivery;
mod direct;
mod fast;
mod fixtures;
mod metadata;
mod names;
mod order;
mod parts;
mod pipes;
mod reconnect;
mod resume;
mod roundtrip;
mod tamper;
mod transcripts_receiver;
mod transcripts_relay;
mod transcripts_sender;
