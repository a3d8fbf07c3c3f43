//! `verdict model import` (an XGBoost or LightGBM model file becomes a verdict model
//! directory: manifest + wasm) and `verdict model inspect` (what an imported model holds).

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use verdict_models::import::{self, Format, Options, module, tables};
use verdict_models::{Manifest, ModelSet, trees};
use verdict_rules::Loader;

use crate::config::TopologyConfig;
use crate::runtime::{model_runtime, rules_options};

/// What `verdict model import` was given.
pub struct ImportArgs<'a> {
    pub format: &'a str,
    pub file: &'a Path,
    pub name: &'a str,
    pub features: &'a str,
    pub class: Option<usize>,
    pub version: Option<String>,
    pub deadline_us: u64,
    pub instances_per_core: u32,
    pub out: &'a Path,
}

/// Serves one in-memory rules file: the probe rule that makes the checker compile the new
/// model's features.
struct OneFile(PathBuf, String);

impl Loader for OneFile {
    fn read(&self, path: &Path, _bytes_max: u64) -> io::Result<String> {
        if path == self.0 {
            Ok(self.1.clone())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not the probe rule",
            ))
        }
    }

    fn rules_in(&self, _path: &Path) -> io::Result<Option<Vec<PathBuf>>> {
        Ok(None)
    }
}

/// Parses, builds, loads (ABI checks and the load-time probe) and checks the features,
/// then writes `OUT/manifest.toml` and `OUT/NAME.wasm` (each written aside and renamed).
pub fn import(args: &ImportArgs, config: &TopologyConfig) -> anyhow::Result<ExitCode> {
    let format = Format::parse(args.format)?;
    let bytes = verdict_models::manifest::read_bounded(args.file, import::MODEL_BYTES_MAX)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let options = Options {
        format,
        name: args.name.to_string(),
        features: import::split_features(args.features)?,
        class: args.class,
        version: args.version.clone(),
        deadline_us: args.deadline_us,
        instances_per_core: args.instances_per_core,
        source: args
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let imported = import::import(&bytes, &options)
        .with_context(|| format!("importing {}", args.file.display()))?;
    let manifest_path = args.out.join("manifest.toml");
    let manifest =
        Manifest::parse(&manifest_path, &imported.manifest).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = model_runtime(config)?;
    let model = runtime
        .compile(manifest, &imported.wasm)
        .map_err(|e| anyhow::anyhow!("the imported module does not load: {e}"))?;
    let set = ModelSet::new(vec![Ok(model)])
        .map_err(|e| anyhow::anyhow!("{}", crate::scoring::render_errors(&e).join("\n")))?;
    let probe = PathBuf::from("<import check>.rules");
    let rule = format!(
        "rule import_check {{ when model(\"{}\") > 2 score 1 }}\n",
        args.name
    );
    if let Err(report) = verdict_rules::load(
        &probe,
        &OneFile(probe.clone(), rule),
        &rules_options(config, &set),
    ) {
        // Only the features can be wrong here; the report points into the manifest text.
        bail!(
            "a feature in --features does not compile (shown in the manifest as it would be \
             written; nothing was written):\n{report}"
        );
    }
    std::fs::create_dir_all(args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let wasm_path = args.out.join(format!("{}.wasm", args.name));
    write_aside(&wasm_path, &imported.wasm)?;
    write_aside(&manifest_path, imported.manifest.as_bytes())?;
    let f = &imported.forest;
    println!(
        "imported {} ({} {}, {} {}): {} trees, {} features, {} bytes of wasm",
        args.file.display(),
        f.format.name(),
        f.library_version,
        f.booster,
        f.objective,
        f.trees.len(),
        f.features,
        imported.wasm.len()
    );
    println!("  wrote {}", manifest_path.display());
    println!("  wrote {}", wasm_path.display());
    println!(
        "  serve it with `verdict serve --models {}` (or the directory above it), or `verdict reload` a running engine",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_aside(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn output_name(output: u32) -> &'static str {
    match output {
        trees::OUT_SIGMOID => "sigmoid (probability)",
        trees::OUT_SOFTMAX => "softmax (the chosen class's probability)",
        trees::OUT_EXP => "exp",
        _ => "identity (the raw sum)",
    }
}

/// `verdict model inspect DIR`: the manifest, provenance and the trees' shape.
pub fn inspect(dir: &Path) -> anyhow::Result<ExitCode> {
    let path = if dir.is_dir() {
        dir.join("manifest.toml")
    } else {
        dir.to_path_buf()
    };
    let manifest = Manifest::read(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wasm = verdict_models::manifest::read_bounded(
        &manifest.wasm,
        verdict_models::manifest::WASM_BYTES_MAX,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (blob, p) =
        module::extract(&wasm).map_err(|e| anyhow::anyhow!("{}: {e}", manifest.wasm.display()))?;
    let s =
        tables::shape(&blob).map_err(|e| anyhow::anyhow!("{}: {e}", manifest.wasm.display()))?;
    println!(
        "model {}@{} ({})",
        manifest.name,
        manifest.version,
        path.display()
    );
    println!(
        "  from {} (sha256 {}), {} {}, imported by {}",
        p.source,
        &p.source_sha256[..16.min(p.source_sha256.len())],
        p.format.name(),
        p.library_version,
        p.imported_by
    );
    println!("  booster: {}", p.booster);
    println!("  objective: {} -> {}", p.objective, output_name(s.output));
    if s.groups > 1 {
        println!("  classes: {} (scores class {})", s.groups, s.class);
    }
    println!("  base score: {} (margin {:?})", p.base_score, s.base);
    if s.average {
        println!("  average_output: the sum is divided by the iterations (random forest)");
    }
    println!(
        "  trees: {} ({} splits, {} leaves), depth max {} mean {:.2}",
        s.trees, s.splits, s.leaves, s.depth_max, s.depth_mean
    );
    println!(
        "  deadline {} us, {} instances per core",
        manifest.deadline_us, manifest.instances_per_core
    );
    println!("  features ({}):", s.cols);
    println!("    #   model name            type         splits  manifest expression");
    for (i, (num, cat)) in s.splits_by_feature.iter().enumerate() {
        let name = p.feature_names.get(i).map_or("-", String::as_str);
        let ty = p.feature_types.get(i).map_or("-", String::as_str);
        let expr = manifest.features.get(i).map_or("-", |f| f.expr.as_str());
        let splits = if *cat > 0 {
            format!("{num}+{cat}c")
        } else {
            num.to_string()
        };
        println!("    {i:<3} {name:<21} {ty:<12} {splits:>6}  {expr}");
    }
    Ok(ExitCode::SUCCESS)
}
