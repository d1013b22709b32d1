//! The agent's periodic measurement: usage of every volume, capacity alerts, the figures `/metrics` shows, and the sweep of removed volumes' lock files.
//!
//! New and changed volumes are measured at once from the spool (see
//! [`crate::agent::spool_worker`]); this walk keeps every other figure fresh.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::alerts::{self, AlertConfig, AlertState};
use crate::agent::metrics::MetricsState;
use crate::core::layout::{HostView, Layout};
use crate::usage::ReportOptions;

/// Measure now and then every `every`, until `stop` turns true.
pub(crate) async fn run(
    layout: Layout,
    view: HostView,
    cfg: AlertConfig,
    every: Duration,
    state: Arc<MetricsState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut alert_state = AlertState::load(&layout, cfg);
    loop {
        let (l, v, st) = (layout.clone(), view.clone(), state.clone());
        let measured = tokio::task::spawn_blocking(move || {
            let report =
                alerts::measure_and_alert(&l, &v, &mut alert_state, &ReportOptions::default());
            st.set_report(report);
            if let Err(e) = crate::core::locks::sweep(&l) {
                tracing::warn!(%e, "cannot sweep the lock files of removed volumes");
            }
            alert_state
        })
        .await;
        match measured {
            Ok(s) => alert_state = s,
            Err(e) => {
                tracing::error!(%e, "the usage measurement failed");
                alert_state = AlertState::load(&layout, cfg);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
