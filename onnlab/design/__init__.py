"""Layer 2 design: realise trained PSFs as phase maps, quantise heights, export to fabrication."""
