//! The actor system: one supervised `DeploymentActor` per deployment (state owners, on
//! dedicated arbiters), started and respawned by the `Registry`, and one `RouterActor` per HTTP
//! worker thread that runs each request's plan. Each deployment actor publishes its bid on a
//! `Board` that routers read without a message.

pub mod board;
pub mod deployment;
pub mod registry;
pub mod router;
