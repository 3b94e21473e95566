//! The semantic cache's benchmark (run by `bench/run.sh`): one partition of ENTRIES answers
//! (100,000 by default), then
//! - the lookup alone (HNSW search plus the liveness checks) for random and real queries;
//! - a lookup as a request pays it: the built-in model embeds the prompt, then the search.
//!
//! Embedding 100,000 real prompts would take longer than the rest of the benchmarks, so the
//! index holds the real embeddings of the query sentences among synthetic ones shaped like
//! real embeddings: each a blend of a few real embeddings of templated prompts, plus noise
//! (real sentence embeddings share directions and form clusters; uniformly random vectors,
//! which have neither, are the hard case for HNSW and are measured too, as queries).
//!
//! Usage: `semantic_bench MODEL_DIR [ENTRIES]`; prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_llm::provider::Usage;
use tollgate_llm::semantic::{embed, hnsw, Plan, SemanticCache};
use tollgate_llm::translate::{Block, Response, Stop};

const SENTENCES: &[&str] = &[
    "What is the capital of France?",
    "How do I reverse a linked list in Rust?",
    "Summarise the plot of Hamlet in two sentences.",
    "What is the boiling point of water at sea level?",
    "Translate 'good morning' into Spanish.",
    "Which planet has the most moons?",
    "Write a haiku about autumn leaves.",
    "How many bytes are in a kibibyte?",
    "Explain what a mutex is to a beginner.",
    "What year did the Berlin Wall fall?",
    "Give me three ideas for a vegetarian dinner.",
    "What does HTTP status 429 mean?",
    "How far is the Moon from the Earth?",
    "Suggest a name for a grey cat.",
    "What is the square root of 144?",
    "Why is the sky blue?",
];

const TOPICS: &[&str] = &[
    "the French Revolution",
    "sourdough bread",
    "Kubernetes pods",
    "black holes",
    "the stock market",
    "photosynthesis",
    "Rust lifetimes",
    "marathon training",
    "climate change",
    "the Roman Empire",
    "jazz harmony",
    "machine learning",
    "vaccines",
    "chess openings",
    "tax returns",
    "electric cars",
    "coffee brewing",
    "the immune system",
    "SQL indexes",
    "volcanoes",
    "Shakespeare's sonnets",
    "solar panels",
    "dog training",
    "quantum computing",
];

const FORMS: &[&str] = &[
    "Explain {} to a ten-year-old.",
    "What are the most common mistakes people make with {}?",
    "Write a short poem about {}.",
    "Give me three facts about {}.",
    "How has {} changed over the last decade?",
    "Summarise the debate around {}.",
    "What should a beginner read first about {}?",
    "List the pros and cons of {}.",
];

const PARAPHRASES: &[&str] = &[
    "Tell me France's capital city",
    "Reversing a singly linked list in Rust: how?",
    "Give a two-sentence summary of Hamlet's plot.",
    "At sea level, at what temperature does water boil?",
    "How do you say 'good morning' in Spanish?",
    "Which planet is orbited by the largest number of moons?",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn row(what: &str, mut samples: Vec<Duration>, target: &str) -> String {
    samples.sort();
    format!(
        "| {what} | {} | {} | {} | {} | {target} |",
        samples.len(),
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99)),
        us(percentile(&samples, 1.0)),
    )
}

fn main() -> Result<(), String> {
    embed::single_threaded_kernels();
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: semantic_bench MODEL_DIR [ENTRIES]")?;
    let entries: usize = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("ENTRIES: {e}"))?,
        None => 100_000,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(dir, entries))
}

async fn run(dir: String, entries: usize) -> Result<(), String> {
    let model = embed::load(std::path::Path::new(&dir))?;
    let dim = model.dim();
    let store = Arc::new(tollgate_core::store::MemoryStore::default());
    let cache = Arc::new(SemanticCache::new(store, entries as u64 + 1_000));
    let plan = Plan {
        partition: [7; 32],
        text: String::new(),
    };
    let answer = Response {
        id: "bench".into(),
        model: "bench".into(),
        content: vec![Block::text("cached answer", "content")],
        stop: Stop::End,
        usage: Usage::default(),
        created: None,
    };
    let ttl = Duration::from_secs(3600);
    let mut rng = fastrand::Rng::with_seed(42);
    let random = |rng: &mut fastrand::Rng| {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
        hnsw::normalise(&mut v);
        v
    };

    // Templated prompts, embedded for real: the bases synthetic entries are blended from.
    let mut bases = Vec::new();
    for topic in TOPICS {
        for form in FORMS {
            bases.push(model.embed(&form.replace("{}", topic))?);
        }
    }
    let synthetic = |rng: &mut fastrand::Rng| {
        let mut v = vec![0f32; dim];
        for weight in [1.0f32, 0.6, 0.3] {
            let b = &bases[rng.usize(..bases.len())];
            for (x, y) in v.iter_mut().zip(b) {
                *x += weight * y;
            }
        }
        for x in v.iter_mut() {
            *x += (rng.f32() - 0.5) * 0.1;
        }
        hnsw::normalise(&mut v);
        v
    };
    let real: Vec<Vec<f32>> = SENTENCES
        .iter()
        .map(|s| model.embed(s))
        .collect::<Result<_, _>>()?;
    // The real entries go in at even intervals among the synthetic ones.
    let every = (entries / real.len().max(1)).max(1);
    let built = Instant::now();
    let mut real_left = real.iter();
    for i in 0..entries {
        let v = match (i % every == every / 2).then(|| real_left.next()).flatten() {
            Some(v) => v.clone(),
            None => synthetic(&mut rng),
        };
        cache.insert(&plan, "bench", &v, answer.clone(), 0.0, ttl);
    }
    let build_time = built.elapsed();

    let now = tollgate_core::time::now_ms();
    let mut search_random = Vec::new();
    let mut search_synthetic = Vec::new();
    for _ in 0..2_000 {
        let q = random(&mut rng);
        let t = Instant::now();
        std::hint::black_box(cache.lookup(&plan.partition, &q, 0.9, now));
        search_random.push(t.elapsed());
        let q = synthetic(&mut rng);
        let t = Instant::now();
        std::hint::black_box(cache.lookup(&plan.partition, &q, 0.9, now));
        search_synthetic.push(t.elapsed());
    }
    let mut search_real = Vec::new();
    let (mut hits, mut reachable) = (0, 0);
    let mut with_embedding = Vec::new();
    let queries: Vec<&str> = PARAPHRASES.iter().chain(SENTENCES).copied().collect();
    for round in 0..25 {
        for (i, q) in queries.iter().enumerate() {
            // Vary the words so no two embeddings are of the same text.
            let text = if round == 0 {
                (*q).to_owned()
            } else {
                format!("{q} ({round})")
            };
            let t = Instant::now();
            let v = model.embed(&text)?;
            let searched = Instant::now();
            let found = cache.lookup(&plan.partition, &v, 0.85, now);
            search_real.push(searched.elapsed());
            with_embedding.push(t.elapsed());
            if round == 0 && i < PARAPHRASES.len() {
                let exact = hnsw::dot(&v, &real[i]);
                if exact >= 0.85 {
                    reachable += 1;
                }
                if found.is_some() {
                    hits += 1;
                }
            }
        }
    }

    println!(
        "Semantic cache, one partition of {entries} entries ({dim} dimensions), built in {:.1} s; paraphrases found {hits} of the {reachable} (of {}) at similarity ≥ 0.85 to their original.",
        build_time.as_secs_f64(),
        PARAPHRASES.len()
    );
    println!();
    println!("| lookup | samples | p50 | p99 | max | target |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        row(
            "search only, embedding-like queries",
            search_synthetic,
            "≤ 1 ms (search)"
        )
    );
    println!(
        "{}",
        row(
            "search only, uniformly random queries",
            search_random,
            "≤ 1 ms (search)"
        )
    );
    println!(
        "{}",
        row("search only, real queries", search_real, "≤ 1 ms (search)")
    );
    println!(
        "{}",
        row(
            "embedding + search (built-in model)",
            with_embedding,
            "≤ 15 ms p99"
        )
    );
    Ok(())
}
