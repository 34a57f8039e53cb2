//! Progress of long Docker work (image build, container start, health): a bar on a terminal,
//! plain lines otherwise, so logs of scripted deploys (CI, tests) stay readable.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Reports the stages of one `up`.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines on stdout otherwise.
    pub(crate) fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar }
    }

    /// Starts a stage with no known length.
    pub(crate) fn stage(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.bar {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"),
                );
                bar.set_length(0);
                bar.set_position(0);
                bar.set_message(message);
            }
            None => println!("{message}"),
        }
    }

    /// Starts a stage of `total` steps (containers started, containers healthy).
    pub(crate) fn counted(&self, message: impl Into<String>, total: usize) {
        let message = message.into();
        match &self.bar {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} [{elapsed}]")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_length(total as u64);
                bar.set_position(0);
                bar.set_message(message);
            }
            None => println!("{message} ({total})"),
        }
    }

    /// One step of a counted stage is done.
    pub(crate) fn step(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// A detail line (a build step); on a terminal it replaces the bar's message.
    pub(crate) fn detail(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(line.to_string()),
            None => println!("  {line}"),
        }
    }

    /// Removes the bar (before the final summary or an error is printed).
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
