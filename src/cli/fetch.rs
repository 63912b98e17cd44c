//! `msa fetch`: named models into the local cache, and what is there.

use crate::weights::registry::{self, MODELS, USER_FILES};
use anyhow::{bail, Result};

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// A named model (see --list).
    pub name: Option<String>,
    /// List the named models and whether each is cached.
    #[arg(long)]
    pub list: bool,
    /// Fetch again even when the cache holds the file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &FetchArgs) -> Result<()> {
    if args.list || args.name.is_none() {
        list();
        return Ok(());
    }
    let name = args.name.as_deref().unwrap_or_default();
    let Some(model) = registry::find(name) else {
        bail!(
            "`{name}` is not a named model; named: {}",
            MODELS.map(|m| m.name).join(", ")
        );
    };
    let path = registry::fetch(model, args.force)?;
    println!("{} {}", model.name, path.display());
    Ok(())
}

fn list() {
    println!("cache: {}", registry::msa_home().display());
    println!("{:<14}{:<10}{:<12}source", "name", "cached", "licence");
    for m in MODELS {
        let cached = if registry::is_cached(&m) { "yes" } else { "no" };
        println!("{:<14}{cached:<10}{:<12}{}", m.name, m.licence, m.source);
    }
    println!("\nfrom your own files (pass the path to --checkpoint):");
    for (name, licence, source) in USER_FILES {
        println!("  {name:<22}{licence:<12}{source}");
    }
}
