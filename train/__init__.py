"""SSPrompt training: learnable prompts for a frozen SAM + CLIP."""
