//! The registry starts one supervised `DeploymentActor` per deployment on dedicated arbiters,
//! hands out their addresses, and respawns an actor whose mailbox closed (actix does not restart
//! an actor that panicked). Addresses and published bids ([`Board`]) are read lock-free on every
//! request; a respawned actor takes over the same board.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix::Supervisor;
use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::board::{Board, GroupQueue};
use super::deployment::DeploymentActor;
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::retry_budget::RetryBudget;

/// Respawns of one deployment are spaced by at least this, doubling up to `RESPAWN_MAX`.
const RESPAWN_MIN: Duration = Duration::from_millis(100);
const RESPAWN_MAX: Duration = Duration::from_secs(10);

struct Slot {
    addr: ArcSwap<Addr<DeploymentActor>>,
    board: Arc<Board>,
    respawn: Mutex<RespawnState>,
}

#[derive(Default)]
struct RespawnState {
    last: Option<Instant>,
    backoff: Duration,
}

pub struct Registry {
    config: Arc<Config>,
    clock: Clock,
    metrics: Arc<Metrics>,
    arbiters: Mutex<Vec<Arbiter>>,
    slots: Vec<Slot>,
    /// Per model group: requests waiting for a slot, and the retry budget.
    queues: Vec<Arc<GroupQueue>>,
    budgets: Vec<RetryBudget>,
}

impl Registry {
    /// Starts every deployment actor. Must run inside an actix `System`.
    pub fn start(config: Arc<Config>, clock: Clock, metrics: Arc<Metrics>) -> Arc<Registry> {
        let arbiters: Vec<Arbiter> = (0..config.server.actor_threads)
            .map(|_| Arbiter::new())
            .collect();
        let queues: Vec<Arc<GroupQueue>> = config
            .groups
            .iter()
            .map(|_| Arc::new(GroupQueue::default()))
            .collect();
        let budgets = config
            .groups
            .iter()
            .map(|g| {
                RetryBudget::new(
                    g.policy.retry_budget_ratio,
                    g.policy.retry_budget_min_per_sec,
                    g.policy.retry_budget_window,
                )
            })
            .collect();
        let slots = config
            .deployments
            .iter()
            .map(|dep| {
                let board = Arc::new(Board::new(dep, queues[dep.group].clone(), clock.clone()));
                let arbiter = arbiters[dep.index % arbiters.len()].handle();
                let addr = spawn(&arbiter, &config, dep.index, &clock, &metrics, &board);
                Slot {
                    addr: ArcSwap::from_pointee(addr),
                    board,
                    respawn: Mutex::new(RespawnState::default()),
                }
            })
            .collect();
        Arc::new(Registry {
            config,
            clock,
            metrics,
            arbiters: Mutex::new(arbiters),
            slots,
            queues,
            budgets,
        })
    }

    /// The wait queue of a model group.
    pub fn queue(&self, group: usize) -> &GroupQueue {
        &self.queues[group]
    }

    /// The retry budget of a model group.
    pub fn budget(&self, group: usize) -> &RetryBudget {
        &self.budgets[group]
    }

    /// Number of deployments.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The current address of a deployment's actor.
    pub fn addr(&self, deployment: usize) -> Arc<Addr<DeploymentActor>> {
        self.slots[deployment].addr.load_full()
    }

    /// Whether the deployment's actor is running; a closed mailbox triggers a respawn (subject
    /// to its backoff) and reads as not running.
    pub fn alive(&self, deployment: usize) -> bool {
        if self.slots[deployment].addr.load().connected() {
            return true;
        }
        self.metrics.deployments[deployment]
            .actor_closed
            .increment(1);
        self.respawn(deployment);
        false
    }

    /// The deployment's published bid and permit counters.
    pub fn board(&self, deployment: usize) -> &Arc<Board> {
        &self.slots[deployment].board
    }

    /// Called when a message found the actor's mailbox closed: starts a fresh actor from config,
    /// unless one was started very recently (then the caller just treats it as unavailable).
    pub fn respawn(&self, deployment: usize) {
        let slot = &self.slots[deployment];
        if slot.addr.load().connected() {
            return; // someone else already respawned it
        }
        let now = self.clock.now();
        {
            let Ok(mut state) = slot.respawn.lock() else {
                return;
            };
            if let Some(last) = state.last {
                if now.saturating_duration_since(last) < state.backoff {
                    return;
                }
                state.backoff = (state.backoff * 2).clamp(RESPAWN_MIN, RESPAWN_MAX);
            } else {
                state.backoff = RESPAWN_MIN;
            }
            state.last = Some(now);
        }
        let Ok(arbiters) = self.arbiters.lock() else {
            return;
        };
        let Some(arbiter) = arbiters.get(deployment % arbiters.len().max(1)) else {
            return;
        };
        let addr = spawn(
            &arbiter.handle(),
            &self.config,
            deployment,
            &self.clock,
            &self.metrics,
            &slot.board,
        );
        slot.addr.store(Arc::new(addr));
        self.metrics.deployments[deployment].respawns.increment(1);
        tracing::warn!(deployment = %self.config.deployments[deployment].id, "deployment actor respawned");
    }

    /// Stops the arbiters (and with them every deployment actor).
    pub fn stop(&self) {
        if let Ok(arbiters) = self.arbiters.lock() {
            for a in arbiters.iter() {
                a.stop();
            }
        }
    }
}

fn spawn(
    arbiter: &ArbiterHandle,
    config: &Arc<Config>,
    deployment: usize,
    clock: &Clock,
    metrics: &Arc<Metrics>,
    board: &Arc<Board>,
) -> Addr<DeploymentActor> {
    let dep = config.deployments[deployment].clone();
    let (clock, metrics, board) = (clock.clone(), metrics.clone(), board.clone());
    Supervisor::start_in_arbiter(arbiter, move |_| {
        DeploymentActor::new(dep, clock, metrics, board)
    })
}
