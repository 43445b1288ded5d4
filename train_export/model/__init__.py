"""Model architectures (the compact depthwise-separable family and its teacher), loading helpers, soups."""
