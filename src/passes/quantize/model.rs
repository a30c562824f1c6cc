//! The rewrite's result, [`Int8Model`]: nets, parameters, the per-op report and warnings;
//! written as a model folder.

use std::collections::HashMap;

use caffe2_proto::{NetDef, OperatorDef};
use ops::Tensor;

use super::Outcome;
use super::RewriteNote;
use crate::graph::builder::{op_def, Arg};
use crate::{Error, Model, Result};

/// The quantized model: nets, parameters and the per-op report.
#[derive(Debug, Clone)]
pub struct Int8Model {
    /// Init net: Int8 fills for quantized parameters, plain fills for those fp32 ops still read.
    pub init: NetDef,
    /// Predict net with Int8 ops and the layout/quantization boundaries.
    pub predict: NetDef,
    /// The tensors the init net produces (QU8 weights, QI32 biases, fp32 parameters).
    pub params: HashMap<String, Tensor>,
    /// One note per op of the fp32 predict net.
    pub report: Vec<RewriteNote>,
    /// Layers likely to lose accuracy, each with the op and the fix.
    pub warnings: Vec<String>,
}

impl Int8Model {
    /// Number of ops that were rewritten to Int8 ops.
    pub fn quantized_count(&self) -> usize {
        self.report
            .iter()
            .filter(|n| matches!(n.outcome, Outcome::Quantized(_)))
            .count()
    }

    /// Number of ops that disappeared into another op's int8 output (absorbed Clips).
    pub fn absorbed_count(&self) -> usize {
        self.report
            .iter()
            .filter(|n| matches!(n.outcome, Outcome::Absorbed(_)))
            .count()
    }

    /// The int8 net as a runnable [`Model`], built from the tensors already at hand (the
    /// init net is not run again: no protobuf round trip of every weight, which matters in
    /// the `--max-loss` loop that builds one model per trial).
    pub fn to_model(&self) -> Result<Model> {
        let paths = crate::ModelPaths {
            init: Some(std::path::PathBuf::from("<memory>/init_net")),
            predict: std::path::PathBuf::from("<memory>/predict_net"),
        };
        Ok(Model::from_parts(
            paths,
            Some(self.init.clone()),
            self.predict.clone(),
            self.params.clone(),
        ))
    }

    /// Writes `init_net.pb`, `predict_net.pb` and `predict_net.pbtxt` into `dir` (created if
    /// needed, existing nets replaced), each through a temporary file and a rename.
    pub fn write_dir(&self, dir: &std::path::Path) -> Result<()> {
        self.write_dir_with(dir, true, false)
    }

    /// Fails for every reason [`Int8Model::write_dir_files`] would refuse `dir` before
    /// writing: it already holds one of the nets and `overwrite` is off, it is a file, it
    /// holds files c2q did not write, or its parent is missing or takes no new folder (call it
    /// before long work, to fail early).
    pub fn check_dir(dir: &std::path::Path, overwrite: bool) -> Result<()> {
        let err = |path: &std::path::Path, e: std::io::Error| Error::File {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        if !overwrite && NETS.iter().any(|name| dir.join(name).exists()) {
            return Err(Error::File {
                path: dir.to_path_buf(),
                msg: "already holds a model (use --overwrite to replace it)".into(),
            });
        }
        if dir.exists() {
            if !dir.is_dir() {
                return Err(Error::File {
                    path: dir.to_path_buf(),
                    msg: "exists and is not a folder".into(),
                });
            }
            let entries = std::fs::read_dir(dir).map_err(|e| err(dir, e))?;
            for entry in entries {
                let name = entry.map_err(|e| err(dir, e))?.file_name();
                let name = name.to_string_lossy();
                // The files c2q writes: the nets and the report.
                let ours = NETS.contains(&name.as_ref()) || name == "report.json";
                if !ours && !name.starts_with('.') {
                    return Err(Error::File {
                        path: dir.to_path_buf(),
                        msg: format!(
                            "holds `{name}`, which c2q did not write: choose a new or empty \
                             output folder (the folder is replaced as a whole)"
                        ),
                    });
                }
            }
        }
        let (parent, base) = staging_parent(dir)?;
        if !parent.is_dir() {
            return Err(Error::File {
                path: dir.to_path_buf(),
                msg: format!("its parent folder {} does not exist", parent.display()),
            });
        }
        // The folder is staged beside `dir`: the parent must take a new folder.
        let probe = parent.join(format!(".{base}.c2q-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).map_err(|e| Error::File {
            path: dir.to_path_buf(),
            msg: format!("cannot create folders in {}: {e}", parent.display()),
        })?;
        std::fs::remove_dir(&probe).map_err(|e| err(&probe, e))?;
        Ok(())
    }

    /// [`Int8Model::write_dir`], refusing a folder that already holds one of the nets unless
    /// `overwrite`, and also writing `init_net.pbtxt` with `text_init`.
    pub fn write_dir_with(
        &self,
        dir: &std::path::Path,
        overwrite: bool,
        text_init: bool,
    ) -> Result<()> {
        self.write_dir_files(dir, overwrite, text_init, &[])
    }

    /// Writes the model folder as a unit: every file (the nets, then `extra` name/content
    /// pairs such as `report.json`) goes into a staging folder beside `dir`, which then
    /// replaces `dir` by renames, so a kill leaves either the old folder or the new one,
    /// never a mix; with `overwrite` the old folder's files are all gone (no stale
    /// `init_net.pbtxt`). A folder holding anything but the files c2q writes is refused, so
    /// replacing it can never delete a user's other files.
    pub fn write_dir_files(
        &self,
        dir: &std::path::Path,
        overwrite: bool,
        text_init: bool,
        extra: &[(&str, &[u8])],
    ) -> Result<()> {
        use caffe2_proto::{io, Format};
        let err = |path: &std::path::Path, e: std::io::Error| Error::File {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let mut files = vec![
            ("init_net.pb", &self.init, Format::Binary),
            ("predict_net.pb", &self.predict, Format::Binary),
            ("predict_net.pbtxt", &self.predict, Format::Text),
        ];
        if text_init {
            files.push(("init_net.pbtxt", &self.init, Format::Text));
        }
        Self::check_dir(dir, overwrite)?;
        let exists = dir.exists();
        let (parent, base) = staging_parent(dir)?;
        let pid = std::process::id();
        let staging = parent.join(format!(".{base}.c2q-new-{pid}"));
        let old = parent.join(format!(".{base}.c2q-old-{pid}"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| err(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| err(&staging, e))?;
        let written = (|| -> Result<()> {
            for (name, net, format) in files {
                io::write(net, staging.join(name), format)?;
            }
            for (name, bytes) in extra {
                let path = staging.join(name);
                let mut f = std::fs::File::create(&path).map_err(|e| err(&path, e))?;
                std::io::Write::write_all(&mut f, bytes).map_err(|e| err(&path, e))?;
                f.sync_all().map_err(|e| err(&path, e))?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        if exists {
            std::fs::rename(dir, &old).map_err(|e| err(dir, e))?;
            if let Err(e) = std::fs::rename(&staging, dir) {
                let _ = std::fs::rename(&old, dir);
                let _ = std::fs::remove_dir_all(&staging);
                return Err(err(dir, e));
            }
            std::fs::remove_dir_all(&old).map_err(|e| err(&old, e))?;
        } else {
            if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(p).map_err(|e| err(p, e))?;
            }
            std::fs::rename(&staging, dir).map_err(|e| err(dir, e))?;
        }
        // The renames reach the disk with the parent folder's entry.
        if let Ok(f) = std::fs::File::open(&parent) {
            let _ = f.sync_all();
        }
        Ok(())
    }
}

/// The folder a model folder is staged in (its parent, `.` for a bare name) and its name.
fn staging_parent(dir: &std::path::Path) -> Result<(std::path::PathBuf, String)> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::File {
            path: dir.to_path_buf(),
            msg: "has no folder name".into(),
        })?;
    Ok((parent, base))
}

/// The net files of a model folder.
const NETS: [&str; 4] = [
    "init_net.pb",
    "predict_net.pb",
    "predict_net.pbtxt",
    "init_net.pbtxt",
];

/// Makes an init-net fill op for a parameter tensor.
pub(super) fn fill_op(name: &str, t: &Tensor) -> Result<OperatorDef> {
    let shape = Arg::Ints(t.shape().iter().map(|&d| d as i64).collect());
    let unsupported = || Error::Tensor {
        name: name.to_string(),
        msg: format!("cannot write a {} parameter as a fill op", t.dtype().name()),
    };
    let op = match t {
        Tensor::F32(a) => op_def(
            "GivenTensorFill",
            &[],
            &[name],
            vec![
                ("shape", shape),
                ("values", Arg::Floats(a.iter().copied().collect())),
            ],
        ),
        Tensor::I32(a) => op_def(
            "GivenTensorIntFill",
            &[],
            &[name],
            vec![
                ("shape", shape),
                ("values", Arg::Ints(a.iter().map(|&v| v as i64).collect())),
            ],
        ),
        Tensor::I64(a) => op_def(
            "GivenTensorInt64Fill",
            &[],
            &[name],
            vec![
                ("shape", shape),
                ("values", Arg::Ints(a.iter().copied().collect())),
            ],
        ),
        Tensor::QU8(a, q) => op_def(
            "Int8GivenTensorFill",
            &[],
            &[name],
            vec![
                ("shape", shape),
                ("values", Arg::B(a.iter().copied().collect())),
                ("Y_scale", Arg::F(q.scale)),
                ("Y_zero_point", Arg::I(q.zero_point as i64)),
            ],
        ),
        Tensor::QI32(a, q) => op_def(
            "Int8GivenIntTensorFill",
            &[],
            &[name],
            vec![
                ("shape", shape),
                ("values", Arg::Ints(a.iter().map(|&v| v as i64).collect())),
                ("Y_scale", Arg::F(q.scale)),
                ("Y_zero_point", Arg::I(q.zero_point as i64)),
            ],
        ),
        _ => return Err(unsupported()),
    };
    Ok(op)
}
