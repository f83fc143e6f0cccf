"""The tutorial's model and data (README, "Your model, your data, your reward"): a tiny Llama folder and four JSONL
files, built here in a few seconds with nothing downloaded. Replace them with your own: any folder
``transformers`` loads (safetensors, no remote code) and files with these columns."""

from pgrad.lm import toy

rows = toy.arithmetic_rows(100, seed=0, max_operand=9)  # every a+b with a, b in 0..9: {"prompt": "3+4=", "answer": "7"}
train, heldout = rows[:80], rows[80:]
toy.build_model_folder(
    "my-model", "llama", toy.ModelSize(layers=2, width=64, heads=4), corpus=toy.arithmetic_corpus(rows), vocab_size=259
)
toy.write_jsonl("prompts.jsonl", train)  # prompts for PPO and GRPO; "answer" is the column the verifier reads
toy.write_jsonl("heldout.jsonl", heldout)  # 20 problems never trained on
toy.write_jsonl("demos.jsonl", toy.demonstrations(train))  # {"prompt", "completion"}: SFT
pairs = [pair for seed in range(10) for pair in toy.preference_pairs(train, seed=seed)]  # 10 wrong answers each
toy.write_jsonl("pairs.jsonl", pairs)  # {"prompt", "chosen", "rejected"}: the reward model
print(f"my-model/ and 4 files: {len(train)} prompts, {len(heldout)} held out, {len(pairs)} preference pairs")
