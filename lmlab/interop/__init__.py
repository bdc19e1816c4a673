"""lmlab.interop: conversion to and from other projects' formats (Hugging Face)."""
