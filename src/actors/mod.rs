//! The actor system: one supervised `DeploymentActor` per deployment (state owners, on
//! dedicated arbiters), started and respawned by the `Registry`, and one `RouterActor` per HTTP
//! worker thread that runs each request's plan.

pub mod deployment;
pub mod registry;
pub mod router;
