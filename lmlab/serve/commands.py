"""CLI face of serving: ``lmlab serve``."""

from __future__ import annotations

from lmlab.serve.server import ServeConfig
from lmlab.serve.server import serve as run_server


def serve(cfg: ServeConfig) -> int:
    """Serve language models over an OpenAI-compatible HTTP API (FastAPI + uvicorn) with continuous
    batching (Transformer decoders share a KV cache; RNN/LSTM/GRU, NPLM, ELMo, Infini-attention and
    encoder-decoder runs decode one state per request; a BERT encoder is refused):
    GET /health, GET /v1/models, POST /v1/completions (prompt strings or token ids, n, stop, seed,
    logprobs, echo with the prompt's log-probs, stream), POST /v1/chat/completions (the ChatML
    template, stops at <|im_end|>, stream), POST /tokenize, POST /detokenize, GET /tokenizer_info and
    GET /metrics (Prometheus text). Requests join and leave the running batch between decode
    steps; greedy output equals 'lmlab generate' whatever else runs. The server listens at once and
    answers 503 ("the model is loading") until the checkpoint is loaded; one that does not load stops
    it with the reason. Without --api-key (or LMLAB_API_KEY) the server listens on loopback only. E.g.:

      lmlab serve --ckpt runs/llama-sft --port 8000 --served-name llama
      python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-');
                 print(c.completions.create(model='llama', prompt='ROMEO:', max_tokens=20).choices[0].text)"
    """
    run_server(cfg)
    return 0
