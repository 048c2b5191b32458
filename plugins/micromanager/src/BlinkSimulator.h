// BlinkSimulator: a live photo-activation / blinking simulator behind the camera.
//
// Emitters sit at fixed random positions on the sensor. Each frame an inactive emitter switches
// on with probability 1 - exp(-ActivationPerMilliwatt * laserPower_mW), stays on for a
// geometrically distributed number of frames (mean MeanOnFrames) and may bleach. The rendered
// frame is background plus integrated Gaussian spots, with Poisson shot noise, EM gain
// (gamma-distributed multiplication), read noise and the camera offset, in ADU.
//
// It exists so that a closed loop (laser power -> number of active emitters -> localizations
// per frame -> feedback plugin -> laser power) can run against a real Micro-Manager core.

#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace rtsmlm {

struct BlinkParameters {
   unsigned sensorWidth = 256;
   unsigned sensorHeight = 256;
   long emitterCount = 2000;
   double activationPerMilliwatt = 2e-4;   // per frame, per mW of activation light
   double meanOnFrames = 2.0;
   double bleachProbability = 0.002;        // per on-frame
   double photonsPerFrame = 2500.0;         // of an emitter that is on for the whole frame
   double backgroundPhotons = 50.0;         // per pixel per frame
   double psfSigmaPixels = 1.3;
   double emGain = 100.0;
   double electronsPerAdu = 45.0;           // after EM gain
   double readNoiseElectrons = 74.4;
   double offsetAdu = 100.0;
   std::uint64_t seed = 0;
};

class BlinkSimulator {
public:
   // Place new emitters and reset their states (called when a parameter changes).
   void Reset(const BlinkParameters& params);

   // Take new photophysics / camera values without moving or resetting the emitters
   // (sensor size, emitter count and seed are kept).
   void UpdateLive(const BlinkParameters& params);

   // Advance one frame at the given activation power and render it into `dst`
   // (sensorWidth*sensorHeight pixels). Returns the number of emitters that were on.
   long RenderFrame(double laserPower_mW, std::uint16_t* dst);

   // Count of emitters that are not bleached.
   long SurvivingEmitters() const;

private:
   enum class State : std::uint8_t { Off, On, Bleached };
   struct Emitter {
      double x, y;  // pixels, origin at the top-left corner of the sensor
      State state;
   };

   void AddSpot(double x, double y, double photons);

   BlinkParameters p_;
   std::vector<Emitter> emitters_;
   std::vector<double> expected_;  // expected photons per pixel for the frame being rendered
   std::mt19937_64 rng_;
};

} // namespace rtsmlm
