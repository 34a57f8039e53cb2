//! What the Docker runner keeps so that `rollback` can start again the release that ran before
//! the last rollout: `$METAPARTICLE_HOME/apps/<app>/docker-history.json`.
//!
//! A release is more than an image: the containers' plan decides which containers exist, and the
//! deployer's variables named in `MP_PASS_ENV` may shape the plan `main` compiles in every
//! container (the rollout example's `REPLICAS`). A rollback started from a shell where those
//! variables differ must still compile the plan that ran, so the history keeps them, as passed.
//!
//! The history names its images so that pruning keeps them (see [`super::image::prune_older`]);
//! it is written once a release serves, with one rename, so it never names a release that did
//! not run. `delete` removes it with the app's folder.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::DockerError;
use crate::deployments::{self, Deployment, RecordError};
use crate::model::Plan;

type Result<T, E = DockerError> = std::result::Result<T, E>;

/// One release of the app: what a generation of containers runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Release {
    /// The build: the image's content hash, as `status` and `MP_VERSION` show it.
    pub version: String,
    /// The engine's tag of its image (`metaparticle/<app>:<version>`).
    pub image: String,
    /// The plan its containers run.
    pub plan: Plan,
    /// The deployer's variables passed into its containers (`NAME=value`, see `MP_PASS_ENV`).
    pub env: Vec<String>,
}

/// The running release and the one it replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct History {
    /// What runs now.
    pub current: Option<Release>,
    /// What ran before the last rollout: what `rollback` returns to.
    pub previous: Option<Release>,
}

fn path(app: &str) -> PathBuf {
    deployments::app_dir(app).join("docker-history.json")
}

impl History {
    /// The app's history (empty when it has none), trusted only as far as it agrees with the
    /// app's record: a history whose current release is not the recorded version (an older
    /// runner deployed over it) says nothing about what ran before.
    pub(crate) fn load(app: &str, record: Option<&Deployment>) -> Result<History> {
        let path = path(app);
        let history: History = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| DockerError::from(RecordError::Damaged { path: path.clone(), source }))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => History::default(),
            Err(e) => return Err(DockerError::io(format!("reading {}", path.display()), e)),
        };
        let agrees = match (&history.current, record.and_then(|r| r.version.as_deref())) {
            (Some(current), Some(version)) => current.version == version,
            _ => false,
        };
        Ok(if agrees { history } else { History::default() })
    }

    /// Writes the history atomically (write, then rename), readable only by this user.
    pub(crate) fn save(&self, app: &str) -> Result<()> {
        let path = path(app);
        deployments::create_private_dir(&deployments::app_dir(app))?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("a history serializes");
        std::fs::write(&tmp, text).map_err(|e| DockerError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| DockerError::io(format!("writing {}", path.display()), e))
    }

    /// The history once `next` serves: the release it replaced becomes the previous one. A
    /// redeploy of the very release that runs (same build, plan and variables) changed nothing,
    /// so it keeps the previous one: `rollback` still returns to a release that differs.
    pub(crate) fn after(self, next: Release) -> History {
        match self.current {
            Some(current) if current == next => History { current: Some(next), previous: self.previous },
            replaced => History { current: Some(next), previous: replaced },
        }
    }

    /// The image tags the history names, which pruning must keep.
    pub(crate) fn images(&self) -> Vec<String> {
        self.current.iter().chain(&self.previous).map(|r| r.image.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, env: &[&str]) -> Release {
        Release {
            version: version.into(),
            image: format!("metaparticle/app:{version}"),
            plan: Plan { nodes: Vec::new() },
            env: env.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn the_replaced_release_becomes_the_previous_one_and_a_rollback_of_a_rollback_goes_forward() {
        let (a, b) = (release("a", &[]), release("b", &["REPLICAS=5"]));
        let history = History::default().after(a.clone());
        assert_eq!(history.previous, None, "a first deploy has nothing to return to");
        let history = history.after(b.clone());
        assert_eq!((history.current.as_ref(), history.previous.as_ref()), (Some(&b), Some(&a)));
        // `rollback` deploys the previous release the same way: the two swap.
        let back = history.clone().after(history.previous.clone().unwrap());
        assert_eq!((back.current.as_ref(), back.previous.as_ref()), (Some(&a), Some(&b)));
        assert_eq!(back.images(), ["metaparticle/app:a", "metaparticle/app:b"]);
    }

    #[test]
    fn a_redeploy_that_changes_nothing_keeps_what_to_roll_back_to() {
        let (a, b) = (release("a", &[]), release("b", &[]));
        let history = History::default().after(a.clone()).after(b.clone()).after(b.clone());
        assert_eq!(history.previous, Some(a.clone()));
        // The same build with other variables is another release.
        let c = release("b", &["REPLICAS=2"]);
        assert_eq!(history.after(c).previous, Some(b));
    }
}
