"""Parameter-efficient fine-tuning methods that wrap a model's modules without forking its class:
LoRA, bottleneck adapters (Houlsby, Pfeiffer), prefix tuning and prompt tuning."""
