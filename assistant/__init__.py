"""小玉 (Xiaoyu): a grounded, citation-first policy assistant for residents."""
