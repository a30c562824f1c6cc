//! How every command names a model: `--model DIR` or `--init FILE --predict FILE`.

use std::path::PathBuf;

use clap::Args;

use crate::{Model, ModelPaths};

/// Model selection flags shared by all commands.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Folder holding init_net and predict_net (.pb or .pbtxt).
    #[arg(long, short = 'm', conflicts_with_all = ["init", "predict"])]
    pub model: Option<PathBuf>,
    /// The init_net file (parameters).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// The predict_net file.
    #[arg(long)]
    pub predict: Option<PathBuf>,
    /// Run Int8 ops with the scalar reference implementation instead of the fast kernels
    /// (bit-identical results, much slower; for checking).
    #[arg(long)]
    pub reference: bool,
}

impl ModelArgs {
    /// Resolves the flags to file paths. `need_init` requires an init_net.
    pub fn paths(&self, need_init: bool) -> anyhow::Result<ModelPaths> {
        let paths = match (&self.model, &self.predict) {
            (Some(dir), _) => ModelPaths::from_dir(dir)?,
            (None, Some(p)) => ModelPaths {
                init: self.init.clone(),
                predict: p.clone(),
            },
            (None, None) => {
                anyhow::bail!("name a model with --model DIR or --init FILE --predict FILE")
            }
        };
        if need_init && paths.init.is_none() {
            anyhow::bail!(
                "{}: no init_net given or found (use --init FILE, or put init_net.pb next to the predict_net)",
                paths.predict.display()
            );
        }
        Ok(paths)
    }

    /// Loads the model.
    pub fn load(&self, need_init: bool) -> anyhow::Result<Model> {
        let mut m = Model::load(self.paths(need_init)?)?;
        if self.reference {
            m.set_reference(true);
        }
        let bad = m.non_finite_params();
        if !bad.is_empty() {
            let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
            eprintln!(
                "warning: {}: {} parameter(s) hold NaN or infinite values ({}{}); outputs \
                 that depend on them will be NaN",
                m.paths
                    .init
                    .as_deref()
                    .unwrap_or(&m.paths.predict)
                    .display(),
                bad.len(),
                shown.join(", "),
                if bad.len() > 5 { ", ..." } else { "" }
            );
        }
        Ok(m)
    }
}

/// A tensor shape on the command line, like `1,3,224,224` or `1x3x224x224`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape(pub Vec<usize>);

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split([',', 'x'])
            .map(|d| {
                d.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad dimension `{d}` in shape `{s}`"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Shape)
    }
}
