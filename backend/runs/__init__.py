"""Runs made elsewhere: prediction files uploaded, scored and analysed like DetLab's own."""
