//! 2D images: a folder or another 2D layout, prompts drawn from the ground truth (seeded)
//! or given per case in a JSON file.

use super::{Cases, EvalOptions};
use crate::data::layout::{discover, Item, Splits};
use crate::data::prompts::PromptKind;
use crate::eval::clicks::{click_traces, ClickTrace};
use crate::eval::evaluate::{evaluate, CaseResult, PromptSource};
use crate::io::prompt::{PromptFile, UserPrompt};
use crate::model::Sam;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub(super) struct Images {
    splits: Splits,
    items: Vec<Item>,
    source: PromptSource,
}

impl Images {
    pub fn open(args: &EvalOptions) -> Result<Self> {
        let splits = discover(args.dataset, &args.data, args.seed, 0.2)?;
        let items = splits.eval_items();
        if items.is_empty() {
            bail!("{}: no cases to evaluate", args.data.display());
        }
        Ok(Self {
            source: prompt_source(&args.prompt, args.seed)?,
            splits,
            items,
        })
    }
}

impl Cases for Images {
    fn count(&self) -> usize {
        self.items.len()
    }

    fn unit(&self) -> &'static str {
        ""
    }

    fn header(&self) -> Option<String> {
        None
    }

    fn evaluate(
        &self,
        sam: &Sam,
        opts: &EvalOptions,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<CaseResult>> {
        let overlays = opts.out.join("overlays");
        evaluate(
            sam,
            &self.items,
            &self.splits.classes,
            &self.source,
            Some((&overlays, opts.overlays)),
            None,
            done,
        )
    }

    fn click_traces(
        &self,
        sam: &Sam,
        opts: &EvalOptions,
        most: usize,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<ClickTrace>> {
        let classes = self.splits.classes.len();
        let feedback = !opts.no_mask_feedback;
        click_traces(
            sam,
            &self.items,
            classes,
            (opts.seed, most, feedback),
            None,
            done,
        )
    }
}

fn prompt_source(arg: &str, seed: u64) -> Result<PromptSource> {
    let kind = match arg {
        "click" => Some(PromptKind::Click),
        "box" => Some(PromptKind::Box),
        "both" => Some(PromptKind::Both),
        "mixed" => Some(PromptKind::Mixed),
        _ => None,
    };
    if let Some(kind) = kind {
        return Ok(PromptSource::Drawn { kind, seed });
    }
    let path = Path::new(arg);
    if !path.exists() {
        bail!("--prompt `{arg}`: expected click, box, both, mixed or an existing PROMPTS.json");
    }
    let text = std::fs::read_to_string(path)?;
    let map: BTreeMap<String, PromptFile> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"case\": {{\"points\": [[x,y,label]], \"box\": [x0,y0,x1,y1]}}}}",
            path.display()
        )
    })?;
    let prompts = map
        .into_iter()
        .map(|(case, p)| {
            let prompt = UserPrompt::from_parts(&p.points, p.bbox)
                .with_context(|| format!("{}: case {case}", path.display()))?;
            Ok((case, prompt))
        })
        .collect::<Result<_>>()?;
    Ok(PromptSource::Given(prompts))
}
