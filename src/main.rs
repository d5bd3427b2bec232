//! The `optimem` binary: parses arguments, sets up tracing, and calls the library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use optimem::bench_decoder::DecoderBenchOptions;
use optimem::bench_encoder::EncoderBenchOptions;
use optimem::model::{Image8, Mode};
use optimem_renderer::{LayoutConfig, Tier};

#[derive(Parser)]
#[command(
    name = "optimem",
    version,
    about = "Optical context-compression memory for LLM agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lay out text (or a chat log) into pages and write them as PNGs with a JSON manifest.
    Render(RenderArgs),
    /// Training feed: JSON requests on stdin, framed grayscale pages with glyph positions on stdout.
    RenderStream(StreamArgs),
    /// DeepSeek-OCR on one image (PNG or JPEG); the text is printed as it is generated.
    Ocr(OcrArgs),
    /// Benchmarks (ratios against a reference run side by side).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve optimem.v1.Memory over gRPC (with health and reflection) until Ctrl-C / SIGTERM.
    Serve(cli::serve::ServeArgs),
    #[command(flatten)]
    Client(cli::client::ClientCommand),
    /// Text or a chat log → pages at the tier policy's tiers, a manifest and a compression report (optionally verified by OCR).
    Compress(CompressArgs),
}

#[derive(Args)]
struct CompressArgs {
    /// Input file, or - for stdin.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Treat the input as a chat log (JSON lines or a JSON array of {"role","content"}).
    #[arg(long)]
    chat: bool,
    /// Recency rank → tier, newest first: tier:count bands, then the tier of every older page (the memory layer's TierPolicy).
    #[arg(long, default_value = "base:2,small:8,tiny")]
    policy: String,
    /// Output directory for page-NNNN.png, manifest.json, report.json and report.md.
    #[arg(long)]
    out: PathBuf,
    /// Model directory: its config gives the token width; --verify runs it.
    #[arg(long, env = "OPTIMEM_MODEL", default_value = "models/optimem-tiny")]
    model: PathBuf,
    /// OCR every page at its tier and report precision per page and overall.
    #[arg(long)]
    verify: bool,
    #[arg(long, default_value_t = 4096)]
    max_new_tokens: usize,
    /// tokenizer.json that counts text tokens (default: the DeepSeek-V3 one in assets/, else the model's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    layout: LayoutArgs,
}

#[derive(Args)]
struct LayoutArgs {
    /// Body font size in logical units on the 1024-unit canvas (the text-density knob).
    #[arg(long, default_value_t = LayoutConfig::default().font_size)]
    font_size: f32,
}

impl LayoutArgs {
    fn config(&self) -> LayoutConfig {
        LayoutConfig {
            font_size: self.font_size,
            ..LayoutConfig::default()
        }
    }
}

#[derive(Args)]
struct RenderArgs {
    /// Input file, or - for stdin.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Treat the input as a chat log (JSON lines or a JSON array of {"role","content"}).
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value = "small")]
    tier: Tier,
    /// Output directory for page-NNNN.png and manifest.json.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    layout: LayoutArgs,
}

#[derive(Args)]
struct StreamArgs {
    #[arg(long, default_value = "small")]
    tier: Tier,
    /// Emit every page of each request, not only the first.
    #[arg(long)]
    all_pages: bool,
    #[command(flatten)]
    layout: LayoutArgs,
}

#[derive(Args)]
struct OcrArgs {
    /// The image to read.
    image: PathBuf,
    /// Model directory (config.json, tokenizer.json, *.safetensors): the bundled model, or a downloaded
    /// deepseek-ai/DeepSeek-OCR folder as is.
    #[arg(long, env = "OPTIMEM_MODEL", default_value = "models/optimem-tiny")]
    model: PathBuf,
    /// tiny (512), small (640), base (1024), large (1280) or gundam (640-px tiles + 1024 global view).
    #[arg(long, default_value = "base")]
    mode: Mode,
    #[arg(long, default_value = optimem::model::FREE_OCR_PROMPT)]
    prompt: String,
    #[arg(long, default_value_t = 4096)]
    max_new_tokens: usize,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// DeepEncoder pages/s and peak memory on this machine's device (CUDA bf16 when built with it, else CPU f32),
    /// with official-size random weights or a model directory's; optionally dumps the outputs for parity checks.
    Encoder {
        #[arg(long, default_value = "base")]
        mode: Mode,
        #[arg(long, default_value_t = 3)]
        iters: usize,
        /// Untimed pages before timing (default: 1 on CUDA, 0 on CPU).
        #[arg(long)]
        warmup: Option<usize>,
        /// Model directory (config.json + *.safetensors, official layout) to load the vision weights from
        /// (default: official-size random weights).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// PNG or JPEG page to encode (default: a synthetic 1191x1684 page).
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Write the first page's `sequence` [N, n_embed] and `projector_out` (f32) and `global_view` (u8) to this
        /// safetensors file.
        #[arg(long, value_name = "FILE")]
        dump: Option<PathBuf>,
        /// Print the report as one JSON object on stdout (the readable report goes to stderr).
        #[arg(long)]
        json: bool,
        /// After the timed pages, encode one more with the time of every model span measured (the device synchronised
        /// around each span) and print the table.
        #[arg(long)]
        profile: bool,
        /// Run the composite candle ops where a fused CUDA kernel exists (`model::fused`), to time both in one call.
        #[arg(long)]
        no_fused: bool,
    },
    /// MoE decoder prefill time and batch-1 decode tokens/s with official-size random weights or a model directory's;
    /// KV-cache bytes per 1,000 tokens; optionally dumps the prefill outputs for parity checks.
    Decoder {
        #[arg(long, default_value_t = 1000)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        decode_tokens: usize,
        /// Also time the decode at this batch size beside batch 1 (the engine batches queued decodes of one page size).
        #[arg(long, default_value_t = 0)]
        batch: usize,
        /// Untimed prefill + decode runs before timing.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed prefill + decode runs; the report gives their median and range.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Model directory (config.json + *.safetensors, official layout) to load the decoder from (default:
        /// official-size random weights).
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Seed of the prompt ids (drawn in the vocabulary; written to the dump).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// After the timed runs, run one more prefill with the time of every model span measured (the device
        /// synchronised around each span) and print the table.
        #[arg(long)]
        profile: bool,
        /// MoE dispatch: auto (grouped on the CPU; on a GPU gather up to 4 tokens, padded beyond), gather, grouped or
        /// padded (see `model::decoder::moe`).
        #[arg(long, default_value = "auto")]
        dispatch: optimem::model::decoder::moe::Dispatch,
        /// Write `ids` (i64 [T]), `hidden` (final-norm output, f32 [T, hidden]), `logits_last` (f32 [8, vocab]) and
        /// `decoded` (i64, the greedy tokens) to this safetensors file.
        #[arg(long, value_name = "FILE")]
        dump: Option<PathBuf>,
        /// Print the report as one JSON object on stdout (the readable report goes to stderr).
        #[arg(long)]
        json: bool,
        /// Run the composite candle ops where a fused CUDA kernel exists (`model::fused`), to time both in one call.
        #[arg(long)]
        no_fused: bool,
    },
    /// The CPU GEMM of every linear layer against candle's f32 GEMM on the same values, at the official shapes:
    /// GFLOP/s of each side and their largest difference (past rounding level the run fails).
    Gemm {
        #[arg(long, default_value_t = 10)]
        repeat: usize,
        /// Print the report as one JSON object on stdout (the readable report goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// The fused CUDA kernels against the composite ops they replace, at the official shapes, on this machine's GPU:
    /// largest difference and time of each side; a difference past an op's tolerance fails the run.
    Kernels {
        /// Decoder rows (prompt tokens) of the decoder ops' shapes.
        #[arg(long, default_value_t = 1000)]
        tokens: usize,
        #[arg(long, default_value_t = 20)]
        repeat: usize,
        /// Print the report as one JSON object on stdout (the readable report goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Raster pages/s per core at each tier, against Pillow drawing the same lines.
    Render {
        #[arg(long, default_value_t = 20)]
        pages: usize,
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Skip the Pillow side (no Python needed).
        #[arg(long)]
        no_pillow: bool,
    },
    /// Fox-style compression study (paper Table 2): precision per 100-token bucket at 64/100 vision tokens.
    Fox {
        #[arg(long, env = "OPTIMEM_MODEL", default_value = "models/optimem-tiny")]
        model: PathBuf,
        /// Directory of .txt files to cut pages from (default: Debian's /usr/share/common-licenses).
        #[arg(long)]
        text: Option<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "tiny,small")]
        modes: Vec<Tier>,
        #[arg(long, default_value_t = 4)]
        pages_per_bucket: usize,
        /// Text tokens per page, as LO-HI in buckets of 100: the paper's 600-1300, or e.g. 100-600 for sparser pages.
        // spelled `std::vec::Vec` so that clap takes the parser's list as one value, not one value per flag
        #[arg(long, default_value = "600-1300", value_parser = optimem::fox::parse_buckets)]
        buckets: std::vec::Vec<(usize, usize)>,
        #[arg(long, default_value = "fox-report")]
        out: PathBuf,
        #[arg(long, default_value_t = 2048)]
        max_new_tokens: usize,
        /// tokenizer.json that counts text tokens (default: the DeepSeek-V3 one in assets/, else the model's).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Each page is set in the largest type that fits it, up to this body font size (4-40; default 40).
        #[arg(long, default_value_t = optimem::fox::FONT_SIZE_RANGE.1)]
        max_font_size: f32,
    },
    /// The gRPC server in process under N concurrent clients: Remember and OPTICAL Recall throughput, latency, errors.
    Service(cli::bench_service::ServiceArgs),
    /// The memory layer without gRPC: throughput, latency, bytes per 1,000 text tokens per tier, int8's precision cost.
    Memory(cli::bench_memory::MemoryArgs),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Render(a) => {
            let layout = a.layout.config();
            layout.validate()?;
            let n = cli::render::render(&a.input, a.chat, a.tier, layout, &a.out)?;
            eprintln!(
                "wrote {n} page(s) at {} ({} px) to {}",
                a.tier,
                a.tier.pixels(),
                a.out.display()
            );
            Ok(())
        }
        Command::RenderStream(a) => {
            let layout = a.layout.config();
            layout.validate()?;
            cli::render::render_stream(a.tier, layout, a.all_pages)
        }
        Command::Ocr(a) => cli::ocr::ocr(&a.image, &a.model, a.mode, &a.prompt, a.max_new_tokens),
        Command::Bench(BenchCommand::Encoder {
            mode,
            iters,
            warmup,
            model,
            image,
            dump,
            json,
            profile,
            no_fused,
        }) => {
            anyhow::ensure!(iters > 0, "--iters must be at least 1");
            optimem::model::fused::set_enabled(!no_fused);
            let (device, dtype) = cli::ocr::device()?;
            let warmup = warmup.unwrap_or(usize::from(device.is_cuda()));
            let mut opts = EncoderBenchOptions::new(mode, iters, dtype, device);
            opts.warmup = warmup;
            opts.profile = profile;
            if let Some(path) = &image {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                opts.image = Some(
                    Image8::decode(&bytes)
                        .with_context(|| format!("decoding {}", path.display()))?,
                );
            }
            opts.model = model;
            let run = optimem::bench_encoder::run(&opts).with_context(|| match &opts.model {
                Some(dir) => format!("encoder bench with the weights in {}", dir.display()),
                None => "encoder bench with random weights".into(),
            })?;
            if let Some(path) = &dump {
                run.save_dump(path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print_report(&run.report, &run.report.to_json(), json);
            Ok(())
        }
        Command::Bench(BenchCommand::Decoder {
            prompt_tokens,
            decode_tokens,
            batch,
            warmup,
            repeat,
            model,
            seed,
            dispatch,
            profile,
            dump,
            json,
            no_fused,
        }) => {
            anyhow::ensure!(
                prompt_tokens > 0 && decode_tokens > 0 && repeat > 0,
                "--prompt-tokens, --decode-tokens and --repeat must be at least 1"
            );
            optimem::model::fused::set_enabled(!no_fused);
            let (device, dtype) = cli::ocr::device()?;
            let mut opts = match &model {
                Some(dir) => DecoderBenchOptions::from_model_dir(dir, dtype, device)
                    .with_context(|| format!("reading the config in {}", dir.display()))?,
                None => DecoderBenchOptions::official(dtype, device)?,
            };
            opts.prompt_tokens = prompt_tokens;
            opts.decode_tokens = decode_tokens;
            opts.batch = batch;
            opts.warmup = warmup;
            opts.repeat = repeat;
            opts.seed = seed;
            opts.dispatch = dispatch;
            opts.profile = profile;
            let run = optimem::bench_decoder::run(&opts).with_context(|| match &model {
                Some(dir) => format!("decoder bench with the weights in {}", dir.display()),
                None => "decoder bench with random weights".into(),
            })?;
            if let Some(path) = &dump {
                run.save_dump(path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print_report(&run.report, &run.report.to_json(), json);
            Ok(())
        }
        Command::Bench(BenchCommand::Gemm { repeat, json }) => {
            anyhow::ensure!(repeat > 0, "--repeat must be at least 1");
            let report = optimem::bench::gemm::run(repeat).context("gemm bench")?;
            print_report(&report.markdown(), &serde_json::to_value(&report)?, json);
            let failed: Vec<_> = report
                .rows
                .iter()
                .filter(|r| !r.ok())
                .map(|r| r.layer.clone())
                .collect();
            anyhow::ensure!(
                failed.is_empty(),
                "our GEMM differs from candle's past rounding level: {failed:?}"
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Kernels {
            tokens,
            repeat,
            json,
        }) => {
            anyhow::ensure!(
                tokens > 1 && repeat > 0,
                "--tokens must be at least 2 and --repeat at least 1"
            );
            let (device, dtype) = cli::ocr::device()?;
            anyhow::ensure!(
                optimem::model::fused::active(&device, dtype),
                "no fused kernels on this device ({device:?}, {dtype:?}): they run in the CUDA build on a GPU"
            );
            let report = optimem::bench::kernels::run(&device, dtype, tokens, repeat)
                .context("kernel bench")?;
            let md = report.markdown();
            print_report(&md, &serde_json::to_value(&report)?, json);
            let failed: Vec<_> = report
                .rows
                .iter()
                .filter(|r| !r.ok())
                .map(|r| r.op.clone())
                .collect();
            anyhow::ensure!(
                failed.is_empty(),
                "fused kernels differ from the composite ops: {failed:?}"
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Render {
            pages,
            repeat,
            no_pillow,
        }) => cli::bench::render(pages, repeat, !no_pillow),
        Command::Serve(a) => cli::serve::serve(a),
        Command::Client(c) => cli::client::run(c),
        Command::Bench(BenchCommand::Fox {
            model,
            text,
            modes,
            pages_per_bucket,
            buckets,
            out,
            max_new_tokens,
            tokenizer,
            max_font_size,
        }) => cli::fox::fox(cli::fox::FoxArgs {
            model,
            text,
            modes,
            pages_per_bucket,
            buckets,
            out,
            max_new_tokens,
            tokenizer,
            max_font_size,
        }),
        Command::Bench(BenchCommand::Service(a)) => cli::bench_service::run(a),
        Command::Bench(BenchCommand::Memory(a)) => cli::bench_memory::run(a),
        Command::Compress(a) => cli::compress::compress(cli::compress::CompressArgs {
            layout: a.layout.config(),
            input: a.input,
            chat: a.chat,
            policy: a.policy,
            out: a.out,
            model: a.model,
            verify: a.verify,
            max_new_tokens: a.max_new_tokens,
            tokenizer: a.tokenizer,
        }),
    }
}

/// The readable report on stdout, or with `json` the JSON object alone on stdout and the readable report on stderr.
fn print_report(report: &impl std::fmt::Display, value: &serde_json::Value, json: bool) {
    if json {
        eprintln!("{report}");
        println!("{value}");
    } else {
        println!("{report}");
    }
}

// Reason: `pin_thread_count` changes the environment, which is sound only while this is the only thread.
#[allow(unsafe_code)]
fn main() -> ExitCode {
    // SAFETY: first thing in `main`: no other thread exists yet.
    unsafe { optimem::threads::pin_thread_count() };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OPTIMEM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    optimem::threads::keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
