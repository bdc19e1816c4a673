"""CLI face of alignment: ``lmlab sft``, ``reward``, ``dpo``, ``rlhf``, ``align pairs|frontier``,
``chat``, ``best-of-n``, ``rejection-sampling`` and the rest."""

from __future__ import annotations

import dataclasses
import json

from lmlab.align.best_of_n import BestOfNConfig, RejectionConfig
from lmlab.align.cai import LabelConfig, ReviseConfig
from lmlab.align.chat import ChatConfig
from lmlab.align.dpo import DPOConfig
from lmlab.align.frontier import FrontierConfig, frontier
from lmlab.align.policy_pairs import PolicyPairsConfig, policy_pairs
from lmlab.align.reward import RewardConfig, ScoreConfig
from lmlab.align.rlhf import RLHFConfig
from lmlab.align.rlhf import rlhf as run_rlhf
from lmlab.align.sft import SFTConfig
from lmlab.align.sft import sft as run_sft


def sft(cfg: SFTConfig) -> int:
    """Supervised fine-tuning of a decoder on conversations, with the loss only on what the assistant
    wrote (each assistant turn and its closing <|im_end|>, so the model learns to end a turn).

    --data is JSONL, one conversation a line: {"messages": [{"role": "system"|"user"|"assistant",
    "content": ...}, ...]} ending with an assistant turn, or {"prompt": ..., "completion": ...}
    (completion-only loss). Text is laid out with the lab's chat template (ChatML; 'lmlab export
    hf' stores it as the tokenizer's chat_template); with --template plain a prompt/completion
    record is raw text instead (end-of-text, prompt, completion, end-of-text: for base models that
    continue text). --pack fills rows of up to --max-len tokens with several conversations (less
    padding; a row's later conversations see its earlier ones, as HF's simple packing). One
    conversation in ten is held out and scored (val_loss in metrics.jsonl). Writes OUT/config.yaml,
    model.safetensors, tokenizer.json, metrics.jsonl, state/ (exact --resume) and report.md (settings,
    final figures, the loss curve in curves.png). E.g.:

      lmlab data instructions --out runs/data/instructions
      lmlab sft --ckpt runs/llama --data runs/data/instructions/train.jsonl --out runs/llama-sft --epochs 2
    """
    r = run_sft(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 130 if r.interrupted else 0
    rows = f" in {r.train_rows} packed rows" if r.train_rows != r.train_conversations else ""
    print(f"trained step {r.step} ({r.elapsed_s:.1f}s) on {r.train_conversations} conversations{rows}; "
          f"first loss {r.first_loss}, validation loss {r.val_loss} ({r.val_conversations} held out); "
          f"saved {r.out}")
    return 130 if r.interrupted else 0


def align_pairs(cfg: PolicyPairsConfig) -> int:
    """Sample two responses per prompt from --policy, score prompt + response with the --reward
    model, and write the higher-scored one as 'chosen': prompt/chosen/rejected JSONL (with the
    score gap as 'margin'), the data of on-policy DPO (the DPO paper's sentiment experiment). E.g.:

      lmlab align pairs --policy runs/sft --reward runs/rm --prompts reviews:sentiment-movies \\
          --n-prompts 2000 --out pairs/policy.jsonl
    """
    r = policy_pairs(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    print(f"wrote {r.pairs} pairs from {r.prompts} prompts ({r.dropped_ties} ties dropped) to {r.out}; "
          f"mean reward chosen {r.chosen_score:.3f}, rejected {r.rejected_score:.3f}, gap {r.mean_gap:.3f}")
    return 0


def align_frontier(cfg: FrontierConfig) -> int:
    """The reward-vs-KL frontier: sample each --policies NAME=RUN on held-out prompts, score the
    responses with --reward, estimate KL(policy || --ref) from the samples' log-probs, and add
    best-of-n from the reference (analytic KL log n - (n-1)/n). Writes OUT/frontier.json,
    frontier.png (the DPO paper's figure 2), samples.md and report.md (the table and the plot). E.g.:

      lmlab align frontier --ref runs/sft --reward runs/rm --policies ppo=runs/ppo,dpo=runs/dpo \\
          --best-of 1,4,16 --out runs/frontier
    """
    rows = frontier(cfg)
    if cfg.json:
        print(json.dumps({"rows": [dataclasses.asdict(r) for r in rows]}))
        return 0
    print(f"{'policy':<18} {'reward':>14} {'KL (nats)':>16} {'length':>7}")
    for r in rows:
        print(f"{r.name:<18} {r.score:>8.3f} ± {r.score_se:.3f} {r.kl:>8.3f} {r.kl_kind:>8} {r.length:>7.1f}")
    print(f"wrote {cfg.out}/frontier.json, frontier.png, samples.md, report.md")
    return 0
def reward_train(cfg: RewardConfig) -> int:
    """Train a reward model: a scalar head (init std 1/sqrt(d+1), bias 0, no dropout) on the last real
    token of a decoder, with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected [- margin]) on
    preference pairs, through the one Trainer (exact --resume).

    --data is a JSONL of {"prompt": str|messages, "chosen": str, "rejected": str[, "margin": float]}
    (split 80/10/10 by a hash of each line), or labelled data with ratings (sentiment-movies, ...):
    human pairs of two texts of one split whose mean ratings differ by more than --margin, the more
    positive one chosen. The model reads prompt text + response (+ end-of-text). Validation: pairwise
    accuracy on the validation pairs (val_accuracy in metrics.jsonl); at the end the test pairs are
    scored too. Writes OUT/config.yaml, model.safetensors, tokenizer.json, metrics.jsonl,
    results.json, state/ and report.md (settings, the figures per split, curves.png). E.g.:

      lmlab reward train --ckpt runs/llama --data sentiment-movies --out runs/rm --epochs 1 --lr 1e-4
    """
    from lmlab.align.reward import train_reward

    r = train_reward(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 130 if r.interrupted else 0
    fig = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items()) or "none"  # noqa: E731
    print(f"trained step {r.step} ({r.elapsed_s:.1f}s) on {r.pairs['train']} pairs; "
          f"first loss {r.first_loss}")
    print(f"validation ({r.pairs['validation']} pairs): {fig(r.val)}")
    print(f"test ({r.pairs['test']} pairs): {fig(r.test)}")
    print(f"saved {r.out}")
    return 130 if r.interrupted else 0


def reward_score(cfg: ScoreConfig) -> int:
    """Score texts with a reward model: one score per text (.txt one a line, or .jsonl with 'text' or
    'prompt' + 'response'), or with --pairs the pairwise accuracy on preference pairs (a JSONL of
    prompt/chosen/rejected, every line; or rated data's --split). --out writes a JSON line per item.
    E.g.:

      lmlab reward score --ckpt runs/rm --data samples.jsonl --out scores.jsonl
      lmlab reward score --ckpt runs/rm --data sentiment-movies --pairs --split test --json
    """
    from lmlab.align.reward import score_file

    r = score_file(cfg)
    if cfg.json:
        print(json.dumps(r))
        return 0
    line = f"{r['n']} {'pairs' if cfg.pairs else 'texts'}: mean score {r['mean']:.4f} (std {r['std']:.4f}, " \
           f"min {r['min']:.4f}, max {r['max']:.4f})"
    if cfg.pairs:
        line += f"; accuracy {r['accuracy']:.4f}, mean reward gap {r['reward_gap']:.4f}"
    print(line + (f"; wrote {r['out']}" if r["out"] else ""))
    return 0


def dpo(cfg: DPOConfig) -> int:
    """Direct preference optimisation of a policy on preference pairs against a frozen reference (the
    starting model), through the one Trainer: --loss sigmoid (DPO), ipo (squared loss), with
    --label-smoothing (conservative DPO) and --length-normalize (mean instead of summed token
    log-probabilities). The reference's log-probabilities are computed once before training and kept
    in OUT/reference_logps.safetensors. Logged every step and on the validation pairs: the implicit
    rewards beta*(log pi - log ref) of the chosen and rejected responses, their margin and the
    accuracy (chosen reward higher). At step 0 the sigmoid loss is ln 2.

    --data as for 'lmlab reward train' (a JSONL of prompt/chosen/rejected, or rated data's human
    pairs); --template plain lays a pair out as end-of-text + prompt + response + end-of-text, chat as
    a user turn and the assistant's response closed by <|im_end|>. --method lora trains LoRA adapters
    (--r, --alpha, --targets) and merges them into OUT/model.safetensors at the end. OUT/report.md
    shows the settings, these figures at the first and last step and on validation, and curves.png. E.g.:

      lmlab dpo --ckpt runs/sft --data pairs.jsonl --out runs/dpo --beta 0.1 --lr 5e-6 --epochs 1
    """
    from lmlab.align.dpo import dpo as run_dpo

    r = run_dpo(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 130 if r.interrupted else 0
    fig = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items()) or "none"  # noqa: E731
    print(f"trained step {r.step} ({r.elapsed_s:.1f}s) on {r.pairs['train']} pairs")
    print(f"first step: {fig(r.first)}")
    print(f"last step: {fig(r.last)}")
    print(f"validation ({r.pairs['validation']} pairs): {fig(r.val)}")
    print(f"saved {r.out}")
    return 130 if r.interrupted else 0


def rlhf(cfg: RLHFConfig) -> int:
    """RLHF on a policy: PPO (a value model, rewards = the reward model's score on the last response
    token less beta times the KL to the frozen starting policy, GAE, clipped policy and value losses)
    or GRPO (--algo grpo: several samples per prompt, advantages relative to the group, no value
    model, the KL as a loss term), through the one trainer.

    --reward is a reward-model run (lmlab reward train) or the verifiable reward 'arithmetic' (1 when
    the response's first number answers the prompt's sum; prompts from --prompts arithmetic:N).
    --prompts is a .jsonl/.txt file, reviews:CORPUS (the sentiment task: review prefixes) or
    arithmetic:N. Each rollout samples --batch-size responses at --temperature (no top-k/top-p: the
    training forward must score the distribution that sampled), then trains --ppo-epochs passes of
    --minibatch-size. Fixed KL coefficient --beta, or Ziegler's adaptive controller with --target-kl.
    metrics.jsonl logs score, kl, beta, entropy, clipfrac, approx_kl, value_loss, response_length.
    --method lora trains LoRA adapters on the policy (the value model in full) and merges them at the
    end. Writes OUT/model.safetensors (the policy), value.safetensors, tokenizer.json, config.yaml,
    metrics.jsonl, state/ (exact --resume; with --method lora the last two in OUT/train) and
    report.md (settings, first and last rollout, score and KL curves in curves.png). E.g.:

      lmlab rlhf --algo ppo --policy runs/sft --reward runs/rm --prompts reviews:sentiment-movies \\
          --out runs/ppo --beta 0.05 --rollouts 50 --lr 1e-5
      lmlab rlhf --algo grpo --policy runs/sft --reward arithmetic --prompts arithmetic:500 --out runs/grpo
    """
    r = run_rlhf(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 130 if r.interrupted else 0
    print(f"{r.algo}: step {r.step}, {r.rollouts} rollouts ({r.elapsed_s:.1f}s); mean score "
          f"{r.first_score} -> {r.last_score}, KL {r.last_kl} (beta {r.beta}); saved {r.out}")
    return 130 if r.interrupted else 0


def cai_revise(cfg: ReviseConfig) -> int:
    """Constitutional AI, SL stage: the model answers each prompt, critiques its answer under a principle
    drawn from the constitution and revises it (few-shot examples show the format; --revisions N rounds).

    Writes OUT/revisions.jsonl (SFT data: prompt/completion, or messages for a conversation prompt; train on
    it with 'lmlab sft'), OUT/chains.jsonl (response, each critique and revision, for reading) and
    OUT/config.yaml. The default constitution is lmlab/align/constitution.yaml; --constitution FILE takes
    yours, --principles a,b only some. E.g.:

      lmlab cai revise --ckpt runs/llama-sft --prompts prompts.jsonl --out runs/cai-sl --template chat
    """
    from lmlab.align.cai import revise

    r = revise(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    print(f"revised {r.written} of {r.prompts} responses ({r.changed:.0%} changed, {r.dropped_empty} dropped "
          f"empty; {r.truncated_contexts} contexts cut to fit) in {r.elapsed_s:.1f}s; principles "
          f"{r.principles}; wrote {r.out}/revisions.jsonl and chains.jsonl")
    return 0


def cai_label(cfg: LabelConfig) -> int:
    """Constitutional AI, RL stage: a feedback model labels pairs of responses. For each pair it reads a
    multiple-choice question under a principle drawn from the constitution, and the log-probabilities of
    its answers (A) and (B) decide; the question is asked in both orders and averaged, cancelling any
    preference for a position.

    --data: JSONL of prompt/chosen/rejected (a human label: the agreement of the AI's labels with it is
    reported), JSONL of prompt/responses (samples, paired in order), or a labelled corpus such as
    sentiment-movies (human pairs from its ratings). Writes --out as prompt/chosen/rejected JSONL with
    ai_prob (the AI's probability that chosen is better) and the principle, for 'lmlab reward train' or
    'lmlab dpo'; exact ties are left out, and so are pairs too long for the feedback model's context (both
counted). E.g.:

      lmlab cai label --feedback runs/llama-sft --data sentiment-movies --principles positive,kind \\
          --limit 500 --out runs/ai-pairs.jsonl
    """
    from lmlab.align.cai import label

    r = label(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    agree = "" if r.agreement is None else \
        f"agreement with the human labels {r.agreement:.1%} on {r.human_labelled}; "
    print(f"labelled {r.pairs} pairs ({r.ties} ties left out; {r.too_long} too long to ask) in "
          f"{r.elapsed_s:.1f}s; {agree}both orders agree on {r.consistent:.0%}, P(A) {r.first_position:.2f}, "
          f"mean AI confidence {r.mean_ai_prob:.2f}; wrote {r.out}")
    return 0
def chat(cfg: ChatConfig) -> int:
    """Chat with a model fine-tuned on conversations (lmlab sft), in the terminal: each line you type
    is a user turn under the chat template; the reply streams as it is sampled and ends at
    <|im_end|>. Commands: /reset (clear the conversation), /system TEXT (set the system message),
    /quit (or Ctrl-D). Ctrl-C stops a reply. When the conversation leaves less than
    --max-new-tokens (or half the context) for the reply, its oldest turns are dropped. Reads
    stdin, so it can be scripted: printf 'hi\\n/quit\\n' | lmlab chat --ckpt RUN. E.g.:

      lmlab chat --ckpt runs/llama-sft --temperature 0.7 --system "You answer briefly."
    """
    from lmlab.align.chat import chat as run_chat

    run_chat(cfg)
    return 0


def best_of_n(cfg: BestOfNConfig) -> int:
    """Best-of-n at inference: sample max(n) responses per prompt from --policy, score them with the
    reward model, and report for each n the mean score of the best of n (the unbiased estimate over
    all n-subsets of the samples) and its KL from the policy, log n - (n-1)/n nats (analytic).
    Writes OUT/config.yaml, metrics.jsonl (one line per n) and samples.jsonl (every response, its
    score, the best per n). E.g., on the sentiment task:

      lmlab best-of-n --policy runs/sft --reward runs/rm --prompts reviews:sentiment-movies \\
          --split test --limit 200 --n 1,4,16 --out runs/bon
    """
    from lmlab.align.best_of_n import best_of_n as run

    r = run(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    print(f"{r.prompts} prompts, {r.samples_per_prompt} samples each; saved {r.out}")
    print(f"  {'n':>4}  {'score':>9}  {'KL (nats)':>9}")
    for x in r.results:
        print(f"  {x['n']:>4}  {x['score']:>9.4f}  {x['kl']:>9.4f}")
    return 0


def rejection_sampling(cfg: RejectionConfig) -> int:
    """Rejection-sampling fine-tuning (Llama 2 style): sample --k responses per prompt from --policy,
    keep the one the reward model scores highest (OUT/best.jsonl), and fine-tune the policy on the
    kept ones with lmlab sft's loss (--template plain: completion-only on raw text; chat: the
    assistant's turn). OUT is an SFT run folder (model.safetensors, tokenizer.json, metrics.jsonl,
    state/ for --resume) with this command's config.yaml. Run it again on OUT for another round. E.g.:

      lmlab rejection-sampling --policy runs/sft --reward runs/rm --prompts reviews:sentiment-movies \\
          --limit 2000 --k 8 --out runs/rs1 --epochs 1 --lr 1e-4
    """
    from lmlab.align.best_of_n import rejection_sampling as run

    r = run(cfg)
    if cfg.json:
        print(json.dumps(dataclasses.asdict(r)))
    else:
        print(f"kept the best of {r.k} for {r.prompts} prompts (mean score {r.mean_score:.4f}, kept "
              f"{r.best_score:.4f}); fine-tuned {r.sft['step']} steps, validation loss {r.sft['val_loss']}; "
              f"saved {r.out}")
    return 130 if r.sft["interrupted"] else 0
