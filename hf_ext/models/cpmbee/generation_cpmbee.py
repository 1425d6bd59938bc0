"""placeholder"""

CpmBeeBeamSearchOutput = None


def cpmbee_beam_search():
    pass
