//! The dependency graph of recipes: `depends` (runtime) and `build-depends`
//! edges from the packages asked for, ordered so every package comes after
//! what it needs. Cycles and missing packages are errors that name the whole
//! chain. It does not schedule builds (see `packages::build`).

use std::collections::{BTreeMap, BTreeSet};

use super::recipe::RecipeSet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("{}", missing_text(chain, missing))]
    Missing { chain: Vec<String>, missing: String },
    #[error("dependency cycle: {}; break it in one of these recipes", chain.join(" -> "))]
    Cycle { chain: Vec<String> },
}

/// What a missing recipe's message says: who needs it, or (asked for
/// directly: a board's `os-package`, a package named on the command line)
/// that nothing by that name exists.
fn missing_text(chain: &[String], missing: &str) -> String {
    match chain.last() {
        Some(last) => format!(
            "{} needs {missing}, which has no recipe (packages/{missing}/package.toml); add it or fix the dependency in packages/{last}/package.toml",
            chain.join(" -> ")
        ),
        None => format!(
            "{missing} has no recipe (packages/{missing}/package.toml); add it, or fix the name asked for (the board profile's os-package or the command line)"
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

/// The packages needed to build `roots` (all edges), dependencies first.
pub fn build_order(set: &RecipeSet, roots: &[String]) -> Result<Vec<String>, GraphError> {
    let mut marks: BTreeMap<String, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    let mut stack = Vec::new();
    for root in roots {
        visit(set, root, &mut marks, &mut stack, &mut order)?;
    }
    Ok(order)
}

fn visit(
    set: &RecipeSet,
    name: &str,
    marks: &mut BTreeMap<String, Mark>,
    stack: &mut Vec<String>,
    order: &mut Vec<String>,
) -> Result<(), GraphError> {
    match marks.get(name) {
        Some(Mark::Done) => return Ok(()),
        Some(Mark::Visiting) => {
            let start = stack.iter().position(|s| s == name).unwrap_or(0);
            let mut chain: Vec<String> = stack[start..].to_vec();
            chain.push(name.to_string());
            return Err(GraphError::Cycle { chain });
        }
        None => {}
    }
    let Some(recipe) = set.get(name) else {
        return Err(GraphError::Missing {
            chain: stack.clone(),
            missing: name.to_string(),
        });
    };
    marks.insert(name.to_string(), Mark::Visiting);
    stack.push(name.to_string());
    for dep in recipe.all_deps() {
        visit(set, dep, marks, stack, order)?;
    }
    stack.pop();
    marks.insert(name.to_string(), Mark::Done);
    order.push(name.to_string());
    Ok(())
}

/// Runtime closure over any `name -> depends` relation (recipes or installed
/// package metadata): `roots` and everything they depend on at runtime,
/// sorted by name. `Err(chain)` names a package that is not known.
pub fn runtime_closure<'a, F>(roots: &[String], depends_of: F) -> Result<Vec<String>, Vec<String>>
where
    F: Fn(&str) -> Option<&'a [String]>,
{
    let mut seen = BTreeSet::new();
    let mut todo: Vec<Vec<String>> = roots.iter().map(|r| vec![r.clone()]).collect();
    while let Some(chain) = todo.pop() {
        let name = chain.last().unwrap().clone();
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(deps) = depends_of(&name) else {
            return Err(chain);
        };
        for d in deps {
            let mut c = chain.clone();
            c.push(d.clone());
            todo.push(c);
        }
    }
    Ok(seen.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::recipe::{Recipe, RecipeKind};

    fn set(edges: &[(&str, &[&str], &[&str])]) -> RecipeSet {
        let mut s = RecipeSet::default();
        for (name, deps, bdeps) in edges {
            s.recipes.insert(
                name.to_string(),
                Recipe {
                    name: name.to_string(),
                    dir: "/x".into(),
                    version: "1".into(),
                    description: String::new(),
                    depends: deps.iter().map(|s| s.to_string()).collect(),
                    build_depends: bdeps.iter().map(|s| s.to_string()).collect(),
                    kind: RecipeKind::Meta,
                    capabilities: Default::default(),
                },
            );
        }
        s
    }

    #[test]
    fn orders_dependencies_first() {
        let s = set(&[
            ("m/os", &["a/app", "k/kernel"], &[]),
            ("a/app", &["l/lib"], &["t/tool"]),
            ("l/lib", &[], &[]),
            ("t/tool", &[], &[]),
            ("k/kernel", &[], &[]),
            ("x/unused", &[], &[]),
        ]);
        let order = build_order(&s, &["m/os".into()]).unwrap();
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert_eq!(order.len(), 5);
        assert!(pos("l/lib") < pos("a/app") && pos("t/tool") < pos("a/app"));
        assert_eq!(order.last().unwrap(), "m/os");
    }

    #[test]
    fn cycle_names_the_chain() {
        let s = set(&[
            ("a/a", &["b/b"], &[]),
            ("b/b", &[], &["c/c"]),
            ("c/c", &["a/a"], &[]),
        ]);
        let err = build_order(&s, &["a/a".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dependency cycle: a/a -> b/b -> c/c -> a/a; break it in one of these recipes"
        );
    }

    #[test]
    fn a_missing_root_says_what_was_asked_for() {
        let s = set(&[("a/app", &[], &[])]);
        let err = build_order(&s, &["meta/nothere".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("meta/nothere has no recipe (packages/meta/nothere/package.toml)")
                && err.contains("os-package"),
            "{err}"
        );
        assert!(!err.starts_with(' ') && !err.ends_with("in "), "{err}");
    }

    #[test]
    fn missing_names_the_chain() {
        let s = set(&[("m/os", &["a/app"], &[]), ("a/app", &["l/nolib"], &[])]);
        let err = build_order(&s, &["m/os".into()]).unwrap_err().to_string();
        assert!(
            err.starts_with("m/os -> a/app needs l/nolib, which has no recipe"),
            "{err}"
        );
    }

    #[test]
    fn runtime_closure_follows_depends_only() {
        let s = set(&[
            ("m/os", &["a/app"], &[]),
            ("a/app", &["l/lib"], &["t/tool"]),
            ("l/lib", &[], &[]),
        ]);
        let c =
            runtime_closure(&["m/os".into()], |n| s.get(n).map(|r| r.depends.as_slice())).unwrap();
        assert_eq!(c, vec!["a/app", "l/lib", "m/os"]);
        let s = set(&[("m/os", &["a/app"], &[])]);
        let chain = runtime_closure(&["m/os".into()], |n| s.get(n).map(|r| r.depends.as_slice()))
            .unwrap_err();
        assert_eq!(chain, vec!["m/os", "a/app"]);
    }
}
