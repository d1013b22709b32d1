//! Progress on a terminal (indicatif), nothing otherwise: long commands log plain lines instead.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};

use crate::backup::run::ItemProgress;

/// A byte-counting bar when stderr is a terminal.
pub(super) fn bytes_bar(total: Option<u64>, what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    Some(bar)
}

/// One progress bar at a time, per item, on a terminal.
pub(super) fn item_bars() -> ItemProgress {
    let current: Mutex<Option<(String, Option<ProgressBar>)>> = Mutex::new(None);
    Arc::new(move |item: &str, n: Option<u64>| {
        let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
        match n {
            Some(n) => {
                if cur.as_ref().map(|(i, _)| i.as_str()) != Some(item) {
                    if let Some((_, Some(b))) = cur.take() {
                        b.finish_and_clear();
                    }
                    *cur = Some((item.to_string(), bytes_bar(None, item)));
                }
                if let Some((_, Some(b))) = cur.as_ref() {
                    b.set_position(n);
                }
            }
            None => {
                if let Some((_, Some(b))) = cur.take() {
                    b.finish_and_clear();
                }
            }
        }
    })
}
