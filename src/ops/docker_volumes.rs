//! Creating and removing allspark volumes through the Docker API when dockerd answers (so `docker volume ls` never shows a ghost or misses a volume), through the driver's records when it does not.

use std::collections::{BTreeMap, HashMap};

use crate::context::Ctx;
use crate::core::names::VolumeName;
use crate::plugin::driver::Driver;

/// Remove `name` through Docker (a volume Docker does not know goes through the driver).
pub(crate) fn remove(ctx: &Ctx, driver: &Driver, name: &VolumeName) -> anyhow::Result<()> {
    let via_docker = crate::docker::block_on(async {
        let d = crate::docker::connect(&ctx.docker_url).await?;
        match d.remove_volume(name, None).await {
            Ok(()) => anyhow::Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("Docker refused to remove {name}")))
            }
        }
    })?;
    match via_docker {
        Ok(true) => Ok(()),
        Ok(false) => Ok(driver.remove(name)?),
        Err(e) if format!("{e:#}").contains("Docker refused") => Err(e),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), volume = %name, "Docker not reachable; removing through the driver state directly");
            Ok(driver.remove(name)?)
        }
    }
}

/// How a volume was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Created {
    /// `docker volume create -d <driver>`: Docker knows it at once.
    Docker,
    /// Through the driver's records: dockerd did not answer (it learns of the volume from List).
    Driver,
}

/// Create `name` with `opts` through Docker with volume driver `docker_driver` (the name the
/// allspark plugin has in this dockerd: `allspark`, or `allspark:latest` for the managed
/// plugin); through the driver when dockerd does not answer. A refusal by Docker or the
/// plugin is an error, never retried behind Docker's back.
pub(crate) fn create(
    ctx: &Ctx,
    driver: &Driver,
    docker_driver: &str,
    name: &VolumeName,
    opts: &BTreeMap<String, String>,
) -> anyhow::Result<Created> {
    let via_docker = crate::docker::block_on(async {
        let d = crate::docker::connect(&ctx.docker_url).await?;
        let o = bollard::volume::CreateVolumeOptions {
            name: name.to_string(),
            driver: docker_driver.to_string(),
            driver_opts: opts
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
            labels: HashMap::new(),
        };
        d.create_volume(o).await.map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "Docker refused to create volume {name} with driver {docker_driver} (is that the allspark plugin's name here? see --driver)"
            ))
        })?;
        anyhow::Ok(())
    })?;
    match via_docker {
        Ok(()) => Ok(Created::Docker),
        Err(e) if format!("{e:#}").contains("Docker refused") => Err(e),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), volume = %name, "Docker not reachable; creating through the driver state directly");
            driver.create(name, Some(opts))?;
            Ok(Created::Driver)
        }
    }
}
