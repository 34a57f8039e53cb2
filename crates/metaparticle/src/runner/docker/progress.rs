//! Progress of long Docker work (image build, container start, health): a bar on a terminal,
//! plain lines otherwise, so logs of scripted deploys (CI, tests) stay readable.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Reports the stages of one `up`.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    /// Plain lines go to stderr instead of stdout (for a command whose stdout is its result).
    to_stderr: bool,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines on stdout otherwise.
    pub(crate) fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar, to_stderr: false }
    }

    /// Like [`Progress::new`], but plain lines go to stderr: for a command whose stdout is its
    /// result (`image` prints only the image reference there, for `$(...)` in scripts).
    pub(crate) fn on_stderr() -> Self {
        let mut progress = Self::new();
        progress.to_stderr = true;
        progress
    }

    fn line(&self, text: &str) {
        if self.to_stderr {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
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
            None => self.line(&message),
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
            None => self.line(&format!("{message} ({total})")),
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
            None => self.line(&format!("  {line}")),
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
